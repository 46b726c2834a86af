%% The rebar3 plugin: `rebar3 beambake build | smoke | boot | inspect` (namespace
%% `beambake`). The project's release is made first (`rebar3 release`, in the current
%% profile: `rebar3 as prod beambake build`), the `{beambake, [...]}` section of
%% rebar.config is written as a recipe (`_build/PROFILE/beambake/recipe.toml`, beambake_tool
%% and beambake_recipe: the section is the recipe's tables as proplists) and the
%% `beambake` binary runs on it. The app `beambake` is the plugin:
%% `{project_plugins, [beambake]}` (its app env `providers` names this module).
-module(rebar3_beambake).

-export([init/1, provider/3, do/2, format_error/1]).

-define(ORIGIN, "rebar.config: {beambake, ...}").

-spec init(rebar_state:t()) -> {ok, rebar_state:t()}.
init(State0) ->
    lists:foldl(fun(M, {ok, S}) -> M:init(S) end, {ok, State0},
                [rebar3_beambake_prv_build, rebar3_beambake_prv_smoke,
                 rebar3_beambake_prv_boot, rebar3_beambake_prv_inspect]).

%% The provider `Command' (module `Module').
provider(Command, Module, State) ->
    P = providers:create([{name, Command},
                          {module, Module},
                          {namespace, beambake},
                          {bare, true},
                          {deps, [{default, compile}]},
                          {example, "rebar3 beambake " ++ atom_to_list(Command)},
                          {short_desc, short_desc(Command)},
                          {desc, short_desc(Command) ++ desc()},
                          {opts, opts(Command)}]),
    {ok, rebar_state:add_provider(State, P)}.

short_desc(build) -> "Build the release's VM image with beambake";
short_desc(smoke) -> "Build the release's VM image, boot it and run the recipe's checks";
short_desc(boot) -> "Build the release's VM image and boot it, console on this terminal";
short_desc(inspect) -> "Show what beambake finds in the release".

desc() ->
    ".\n\nThe release is made first (rebar3 release). The {beambake, [...]} section of "
    "rebar.config is beambake's recipe as proplists: {target, microvm}, {vm, [{memory_mib, 256}]}, "
    "{check, [[{type, tcp_echo}, {port, 8080}]]}; written to _build/PROFILE/beambake/recipe.toml. "
    "The binary: {beambake_binary, Path} in rebar.config, else $BEAMBAKE, else beambake on PATH.".

opts(Command) ->
    All = [{out, $o, "out", string,
            "where build outputs go, one dir per recipe inside (default _build/PROFILE/beambake/out)"},
           {target, $t, "target", string, "the recipe's target (overrides {target, T})"},
           {verbose, $v, "verbose", undefined, "print each step and the tools' output"},
           {kernel, undefined, "kernel", string, "use this kernel instead of the recipe's"},
           {modules, undefined, "modules", string, "modules for --kernel"},
           {no_bake, undefined, "no-bake", undefined, "rumprun: do not bake the BEAM"},
           {junit, undefined, "junit", string, "write the results as JUnit XML"},
           {json, undefined, "json", undefined, "print the result as JSON"},
           {accel, undefined, "accel", string, "auto | kvm | tcg (overrides the recipe's)"},
           {count, undefined, "count", integer, "start this many VMs from the one image"}],
    Takes = #{build => [out, target, verbose, kernel, modules, no_bake, json],
              smoke => [out, target, verbose, kernel, modules, no_bake, junit, json],
              boot => [out, target, verbose, kernel, modules, accel, count],
              inspect => [verbose, json]},
    [O || O <- All, lists:member(element(1, O), maps:get(Command, Takes))].

-spec do(atom(), rebar_state:t()) -> {ok, rebar_state:t()} | {error, term()}.
do(Command, State) ->
    try
        {ok, do_(Command, State)}
    catch
        throw:{beambake, Msg} -> {error, {?MODULE, Msg}}
    end.

do_(Command, State) ->
    {Opts, _} = rebar_state:command_parsed_args(State),
    Bin = ok(beambake_tool:find_binary(rebar_state:get(State, beambake_binary, undefined),
                                      "{beambake_binary, Path} in rebar.config")),
    Name = release_name(rebar_state:get(State, relx, [])),
    State1 = make_release(State),
    Base = filename:absname(rebar_dir:base_dir(State1)),
    RelDir = filename:join([Base, "rel", Name]),
    Input = case Command of
                inspect -> RelDir;
                _ -> write_recipe(State1, Base, RelDir, Name, Opts)
            end,
    Out = proplists:get_value(out, Opts, filename:join([Base, "beambake", "out"])),
    Args = beambake_tool:args(Command, Input, [{out, Out} | proplists:delete(out, Opts)]),
    rebar_api:debug("~ts ~ts", [Bin, lists:join(" ", Args)]),
    case Command of
        boot ->
            case beambake_tool:run_interactive(Bin, Args) of
                0 -> ok;
                S -> throw({beambake, io_lib:format("beambake boot ended with status ~b", [S])})
            end;
        _ ->
            Print = case Command =:= inspect orelse proplists:get_bool(json, Opts) of
                        true -> fun(L) -> rebar_api:console("~ts", [L]) end;
                        false -> fun(L) -> rebar_api:info("~ts", [L]) end
                    end,
            case beambake_tool:run(Bin, Args, Print) of
                ok -> ok;
                {error, Status, Text} ->
                    Recipe = filename:join([Base, "beambake", "recipe.toml"]),
                    {ok, Toml} = file:read_file(Recipe),
                    throw({beambake, io_lib:format("~ts (beambake exited with status ~b)",
                                                   [beambake_tool:explain(Text, Recipe, Toml, ?ORIGIN),
                                                    Status])})
            end
    end,
    State1.

%% The release rebar3 makes (the first in relx's config).
release_name(Relx) ->
    case [N || R <- Relx, element(1, R) =:= release, tuple_size(R) >= 3,
               {N, _} <- [element(2, R)]] of
        [N | _] -> atom_to_list(N);
        [] -> throw({beambake, "no release configured: rebar3 beambake packs the release that "
                     "`rebar3 release` makes; add one to rebar.config, e.g. "
                     "{relx, [{release, {myapp, \"0.1.0\"}, [myapp, sasl]}]}"})
    end.

%% `rebar3 release', in this profile, without this command's options.
make_release(State) ->
    case rebar_core:do([{default, release}], rebar_state:command_parsed_args(State, {[], []})) of
        {ok, S} -> rebar_state:command_parsed_args(S, rebar_state:command_parsed_args(State));
        {error, E} -> throw({beambake, io_lib:format("rebar3 release failed: ~tp", [E])})
    end.

write_recipe(State, Base, RelDir, Name, Opts) ->
    Section = rebar_state:get(State, beambake, []),
    Recipe = in_section(beambake_tool:recipe(Section, #{source => RelDir, name => Name,
                                                        target => proplists:get_value(target, Opts)})),
    Path = filename:join([Base, "beambake", "recipe.toml"]),
    _ = in_section(beambake_tool:write_recipe(Path, Recipe)),
    Path.

in_section({ok, V}) -> V;
in_section({error, Msg}) -> throw({beambake, ?ORIGIN ++ ": " ++ Msg}).

ok({ok, V}) -> V;
ok({error, Msg}) -> throw({beambake, Msg}).

-spec format_error(term()) -> iolist().
format_error(Msg) when is_list(Msg) -> Msg;
format_error(Other) -> io_lib:format("~tp", [Other]).
