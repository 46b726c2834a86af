%% The term -> TOML encoder behind the rebar3 plugin and the mix task: exact output.
-module(beambake_recipe_tests).
-include_lib("eunit/include/eunit.hrl").

toml(T) ->
    {ok, B} = beambake_recipe:to_toml(T),
    binary_to_list(B).

section_becomes_the_recipe_test() ->
    ?assertEqual(
       "name = \"echo\"\n"
       "target = \"microvm\"\n"
       "\n[release]\nsource = \"/p/_build/default/rel/echo\"\n"
       "\n[vm]\nmemory_mib = 256\n"
       "\n[launch]\nextra_args = [\"+S\", \"1:1\"]\n"
       "\n[[check]]\ntype = \"tcp_echo\"\nport = 8080\npayload = \"hi\"\n"
       "\n[[check]]\ntype = \"http\"\nport = 8081\nstatus = 200\nverify = false\n",
       toml([{name, "echo"}, {target, microvm},
             {release, [{source, "/p/_build/default/rel/echo"}]},
             {vm, [{memory_mib, 256}]},
             {check, [[{type, tcp_echo}, {port, 8080}, {payload, "hi"}],
                      [{type, http}, {port, 8081}, {status, 200}, {verify, false}]]},
             {launch, [{extra_args, ["+S", <<"1:1">>]}]}])).

%% Plain keys come before any table header (TOML's rule), tables before arrays of tables,
%% each in the order given; nested tables are dotted.
order_and_nesting_test() ->
    ?assertEqual("a = 1\nc = [1.5, true]\n\n[b]\nx = \"y\"\n\n[b.n]\nz = 0\n\n[[d]]\ne = \"f\"\n",
                 toml([{a, 1}, {d, [#{e => f}]}, {b, [{x, y}, {n, [{z, 0}]}]}, {c, [1.5, true]}])).

elixir_terms_test() ->
    %% keyword lists, binaries (Elixir strings), maps.
    ?assertEqual("name = \"e\"\n\n[network]\nguest = \"10.0.0.2/24\"\n\n[vm]\ncpus = 2\n",
                 toml([{name, <<"e">>}, {network, #{guest => <<"10.0.0.2/24">>}},
                       {vm, [{cpus, 2}]}])).

escaping_test() ->
    ?assertEqual("p = \"a\\\"b\\\\c\\nd\\te\\u0001\"\n\"odd key\" = \"\x{e9}t\x{e9}\"\n",
                 unicode:characters_to_list(
                   list_to_binary(toml([{p, <<"a\"b\\c\nd\te\x01">>},
                                        {"odd key", <<"été"/utf8>>}])))),
    ?assertEqual("e = []\ns = \"\"\n", toml([{e, []}, {s, <<>>}])),
    %% An Erlang string is a string when printable; other integer lists are arrays.
    ?assertEqual("s = \"a\\nb\"\nl = [1, 2]\n", toml([{s, "a\nb"}, {l, [1, 2]}])).

no_toml_form_test() ->
    ?assertEqual({error, "vm.memory_mib: no TOML form for {256}"},
                 beambake_recipe:to_toml([{vm, [{memory_mib, {256}}]}])),
    ?assertMatch({error, "the section: expected a list of {Key, Value}" ++ _},
                 beambake_recipe:to_toml([memory])).
