%% The plugin's and the mix task's shared side (beambake_tool), without running beambake.
-module(beambake_tool_tests).
-include_lib("eunit/include/eunit.hrl").

recipe_fills_in_the_release_test() ->
    Opts = #{source => "/p/rel/echo", name => "echo", target => undefined},
    ?assertEqual({ok, [{name, "echo"}, {target, microvm},
                       {release, [{source, "/p/rel/echo"}, {prefix, "/srv/echo"}]},
                       {vm, [{memory_mib, 512}]}]},
                 beambake_tool:recipe([{vm, [{memory_mib, 512}]},
                                       {release, [{prefix, "/srv/echo"}]}], Opts)),
    ?assertMatch({ok, [{name, "mine"}, {target, "uml"} | _]},
                 beambake_tool:recipe([{name, "mine"}, {target, osv}],
                                      Opts#{target => "uml"})),
    ?assertMatch({error, "expected a list of {Key, Value}" ++ _},
                 beambake_tool:recipe([memory], Opts)).

args_test() ->
    Opts = [{out, "/o"}, {verbose, true}, {json, true}, {junit, "j.xml"}, {accel, "tcg"},
            {count, 2}, {no_bake, false}],
    ?assertEqual(["smoke", "r.toml", "--out", "/o", "-v", "--json", "--junit", "j.xml"],
                 beambake_tool:args(smoke, "r.toml", Opts)),
    ?assertEqual(["boot", "r.toml", "--out", "/o", "-v", "--accel", "tcg", "--count", "2"],
                 beambake_tool:args(boot, "r.toml", Opts)),
    ?assertEqual(["inspect", "/rel", "-v", "--json"], beambake_tool:args(inspect, "/rel", Opts)).

explain_test() ->
    Text = <<"# header\nname = \"e\"\n\n[vm]\nmemroy = 256\n">>,
    Err = "/b/recipe.toml: line 5: unknown field `memroy` in `vm` (did you mean `memory_mib`?), "
          "expected one of `memory_mib`, `cpus`: memroy = 256",
    ?assertEqual("rebar.config: {beambake, ...}: unknown field `memroy` in `vm` (did you mean "
                 "`memory_mib`?), expected one of `memory_mib`, `cpus`",
                 beambake_tool:explain(Err, "/b/recipe.toml", Text, "rebar.config: {beambake, ...}")),
    ?assertEqual("O: network.guest is bad (in /b/recipe.toml, written from it)",
                 beambake_tool:explain("/b/recipe.toml: network.guest is bad", "/b/recipe.toml",
                                       Text, "O")),
    ?assertEqual("qemu died", beambake_tool:explain("qemu died", "/b/recipe.toml", Text, "O")).

find_binary_test() ->
    ?assertEqual({error, "the beambake binary named by k = /nonexistent is not an executable file"},
                 beambake_tool:find_binary("/nonexistent", "k")),
    ?assertEqual({ok, "/bin/sh"}, beambake_tool:find_binary(<<"/bin/sh">>, "k")).
