%% The rebar3 plugin and the mix task for real: `rebar3 beambake smoke` in a copy of
%% examples/echo_plugin (the plugin from this checkout through `_checkouts/beambake`) and
%% `mix beambake.smoke` in a copy of examples/echo_mix (beambake as a path dependency, no
%% Hex), each booting a microvm under qemu; the plugin laid out as a Hex package holds it;
%% and the bad inputs: an unknown key in the section (named, with the closest valid one),
%% no release configured, no beambake binary.
%% Needs `BEAMBAKE` and `BEAMBAKE_ROOT` (set by `cargo xtask test`), else skipped and the
%% skip recorded in `BEAMBAKE_SKIP_LOG`; the mix tests also need `mix`.
-module(rebar3_beambake_tests).
-include_lib("eunit/include/eunit.hrl").

plugin_test_() ->
    case {os:getenv("BEAMBAKE"), os:getenv("BEAMBAKE_ROOT")} of
        {Bin, Root} when is_list(Bin), is_list(Root) ->
            [{timeout, 600, fun() -> rebar3_smoke(Bin, Root) end},
             {timeout, 300, fun() -> rebar3_hex_layout(Bin, Root) end},
             {timeout, 300, fun() -> rebar3_unknown_key(Bin, Root) end},
             {timeout, 300, fun() -> rebar3_no_release(Bin, Root) end},
             {timeout, 300, fun() -> rebar3_binary_missing(Root) end}]
            ++ case os:find_executable("mix") of
                   false ->
                       skip("mix_test_", "mix not installed (apt-get install elixir)"),
                       [];
                   _ ->
                       [{timeout, 600, fun() -> mix_smoke(Bin, Root) end},
                        {timeout, 300, fun() -> mix_unknown_key(Bin, Root) end}]
               end;
        _ ->
            skip("plugin_test_", "BEAMBAKE and BEAMBAKE_ROOT not set (cargo xtask test sets them)"),
            []
    end.

skip(Test, Why) ->
    io:format(user, "rebar3_beambake_tests skipped: ~s~n", [Why]),
    case os:getenv("BEAMBAKE_SKIP_LOG") of
        Log when is_list(Log), Log =/= "" ->
            ok = file:write_file(Log, ["rebar3_beambake_tests::", Test, "\t", Why, "\n"], [append]);
        _ -> ok
    end.

rebar3_smoke(Bin, Root) ->
    Dir = rebar3_project(Root),
    Out = filename:join(Dir, "vm-out"),
    {Status, Log} = sh(Dir, [{"BEAMBAKE", Bin}], "rebar3 beambake smoke --out " ++ Out),
    ?assertEqual(0, Status, Log),
    ?assertMatch({match, _}, re:run(Log, "===> ok +tcp_echo:8080 .* echoed 17 bytes"), Log),
    ?assertMatch({match, _}, re:run(Log, "===> echo_plugin: passed"), Log),
    %% The recipe it wrote: the section's tables, the release rebar3 just made.
    {ok, Recipe} = file:read_file(filename:join(Dir, "_build/default/beambake/recipe.toml")),
    ?assertMatch({match, _}, re:run(Recipe, "\\[release\\]\nsource = \"" ++ Dir
                                    ++ "/_build/default/rel/echo_plugin\"")),
    ?assert(filelib:is_regular(filename:join(Out, "echo_plugin/boot.json"))),
    rm(Dir).

%% The plugin as a Hex package holds it (src, lib, rebar.config, mix.exs, README.md; no
%% test or _build), copied into _checkouts: `rebar3 as prod beambake build` in a profile.
rebar3_hex_layout(Bin, Root) ->
    Dir = copy(Root, "examples/echo_plugin"),
    Pkg = filename:join(Dir, "_checkouts/beambake"),
    ok = filelib:ensure_dir(filename:join(Pkg, "x")),
    {0, _} = sh(filename:join(Root, "erlang"), [],
                "cp -r src lib rebar.config mix.exs README.md " ++ Pkg),
    {Status, Log} = sh(Dir, [{"BEAMBAKE", Bin}], "rebar3 as prod beambake build"),
    ?assertEqual(0, Status, Log),
    ?assert(filelib:is_regular(filename:join(Dir, "_build/prod/beambake/out/echo_plugin/boot.json"))),
    ?assertMatch({match, _}, re:run(Log, "_build/prod/beambake/out/echo_plugin/vmlinuz"), Log),
    rm(Dir).

rebar3_unknown_key(Bin, Root) ->
    Dir = rebar3_project(Root),
    edit(Dir, "rebar.config", "{vm, [{memory_mib, 256}]}", "{vm, [{memroy, 256}]}"),
    {Status, Log} = sh(Dir, [{"BEAMBAKE", Bin}], "rebar3 beambake build"),
    ?assertNotEqual(0, Status),
    ?assertMatch({match, _}, re:run(Log, "===> .*rebar.config: \\{beambake, \\.\\.\\.\\}: unknown field "
                                    "`memroy` in `vm` \\(did you mean `memory_mib`\\?\\)"), Log),
    edit(Dir, "rebar.config", "{vm, [{memroy, 256}]}", "{checks, [[{type, tcp_echo}]]}"),
    {_, Log2} = sh(Dir, [{"BEAMBAKE", Bin}], "rebar3 beambake build"),
    ?assertMatch({match, _}, re:run(Log2, "unknown field `checks` at the top level "
                                    "\\(did you mean `check`\\?\\)"), Log2),
    rm(Dir).

rebar3_no_release(Bin, Root) ->
    Dir = rebar3_project(Root),
    {ok, Config} = file:read_file(filename:join(Dir, "rebar.config")),
    NoRelx = re:replace(Config, "\\{relx, \\[.*?\n\\]\\}\\.", "", [dotall, {return, binary}]),
    ?assertNotEqual(Config, NoRelx),
    ok = file:write_file(filename:join(Dir, "rebar.config"), NoRelx),
    {Status, Log} = sh(Dir, [{"BEAMBAKE", Bin}], "rebar3 beambake smoke"),
    ?assertNotEqual(0, Status),
    ?assertMatch({match, _}, re:run(Log, "===> .*no release configured: rebar3 beambake packs the "
                                    "release that `rebar3 release` makes"), Log),
    rm(Dir).

rebar3_binary_missing(Root) ->
    Dir = rebar3_project(Root),
    {S1, Log1} = sh(Dir, [{"BEAMBAKE", "/nonexistent/beambake"}], "rebar3 beambake build"),
    ?assertNotEqual(0, S1),
    ?assertMatch({match, _}, re:run(Log1, "the beambake binary named by "
                                    "BEAMBAKE=/nonexistent/beambake is not an executable file"), Log1),
    %% Neither BEAMBAKE nor the config key: PATH, which has no beambake here.
    Path = lists:join(":", [D || D <- string:split(os:getenv("PATH"), ":", all),
                                 not filelib:is_regular(filename:join(D, "beambake"))]),
    {S2, Log2} = sh(Dir, [{"BEAMBAKE", false}, {"PATH", lists:flatten(Path)}],
                    "rebar3 beambake build"),
    ?assertNotEqual(0, S2),
    ?assertMatch({match, _}, re:run(Log2, "the beambake binary was not found on PATH; .* "
                                    "\\{beambake_binary, Path\\} in rebar.config"), Log2),
    rm(Dir).

mix_smoke(Bin, Root) ->
    Dir = mix_project(Root),
    {Status, Log} = sh(Dir, mix_env(Dir, Bin), "mix beambake.smoke"),
    ?assertEqual(0, Status, Log),
    ?assertMatch({match, _}, re:run(Log, "ok +tcp_echo:8080 .* echoed 14 bytes"), Log),
    ?assertMatch({match, _}, re:run(Log, "echo_mix: passed"), Log),
    {ok, Recipe} = file:read_file(filename:join(Dir, "_build/prod/beambake/recipe.toml")),
    ?assertMatch({match, _}, re:run(Recipe, "source = \"" ++ Dir ++ "/_build/prod/rel/echo_mix\"")),
    %% A mix release's boot script traced on the host and pruned (examples/echo_mix).
    ?assertMatch({match, _}, re:run(Recipe, "code_loading = \"traced\"")),
    rm(Dir).

mix_unknown_key(Bin, Root) ->
    Dir = mix_project(Root),
    edit(Dir, "mix.exs", "vm: [memory_mib: 256]", "vm: [memory: 256]"),
    {Status, Log} = sh(Dir, mix_env(Dir, Bin), "mix beambake.build"),
    ?assertNotEqual(0, Status),
    ?assertMatch({match, _}, re:run(Log, "\\*\\* \\(Mix\\) mix.exs: beambake: \\[\\.\\.\\.\\]: unknown "
                                    "field `memory` in `vm` \\(did you mean `memory_mib`\\?\\)"), Log),
    rm(Dir).

mix_env(Dir, Bin) ->
    [{"BEAMBAKE", Bin}, {"MIX_ENV", "prod"}, {"HOME", Dir}, {"MIX_HOME", Dir ++ "/.mix"},
     {"HEX_OFFLINE", "1"}].

%% A copy of examples/echo_plugin using the plugin from this checkout.
rebar3_project(Root) ->
    Dir = copy(Root, "examples/echo_plugin"),
    ok = file:make_dir(filename:join(Dir, "_checkouts")),
    ok = file:make_symlink(filename:join(Root, "erlang"), filename:join(Dir, "_checkouts/beambake")),
    Dir.

%% A copy of examples/echo_mix with beambake as a path dependency on this checkout.
mix_project(Root) ->
    Dir = copy(Root, "examples/echo_mix"),
    edit(Dir, "mix.exs", "path: \"../../erlang\"", "path: \"" ++ Root ++ "/erlang\""),
    Dir.

copy(Root, Example) ->
    Tmp = string:trim(os:cmd("mktemp -d /tmp/beambake-plugin-tests.XXXXXX")),
    Dir = filename:join(Tmp, filename:basename(Example)),
    {0, _} = sh(Tmp, [], "cp -r " ++ filename:join(Root, Example) ++ " " ++ Dir
                ++ " && rm -rf " ++ Dir ++ "/_build " ++ Dir ++ "/_checkouts " ++ Dir ++ "/deps"),
    Dir.

edit(Dir, File, From, To) ->
    Path = filename:join(Dir, File),
    {ok, Text} = file:read_file(Path),
    New = binary:replace(Text, list_to_binary(From), list_to_binary(To)),
    ?assertNotEqual(Text, New),
    ok = file:write_file(Path, New).

rm(Dir) -> file:del_dir_r(filename:dirname(Dir)).

%% `sh -c Cmd' in Dir with Env added (false: unset): {ExitStatus, Output}.
sh(Dir, Env, Cmd) ->
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", Cmd]}, {cd, Dir}, {env, [{"REBAR_PROFILE", false} | Env]},
                      exit_status, stderr_to_stdout, binary]),
    sh_collect(Port, []).

sh_collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> sh_collect(Port, [Acc, D]);
        {Port, {exit_status, S}} ->
            {S, unicode:characters_to_list(iolist_to_binary(Acc))}
    end.
