%% What the rebar3 plugin (rebar3_beambake) and the mix task (Mix.Tasks.Beambake.*) share
%% around the `beambake` binary: finding it, writing the recipe from the project's
%% `beambake` section, running it with its output streamed, and mapping its errors about
%% the recipe back onto the section the user wrote. No schema here: beambake validates.
-module(beambake_tool).

-include_lib("kernel/include/file.hrl").

-export([find_binary/2, recipe/2, write_recipe/2, args/3, run/3, run_interactive/2,
         explain/4]).

%% @doc The beambake binary: `Configured' (a config key's value, `undefined' when unset;
%% `Key' names that key in errors), else `$BEAMBAKE', else `beambake' on PATH.
-spec find_binary(undefined | string() | binary(), string()) -> {ok, string()} | {error, string()}.
find_binary(undefined, Key) ->
    case os:getenv("BEAMBAKE") of
        V when V =:= false; V =:= "" ->
            case os:find_executable("beambake") of
                false ->
                    {error, "the beambake binary was not found on PATH; install it (`cargo install "
                     "--path builder` in beambake's checkout) or name it with " ++ Key
                     ++ " or the environment variable BEAMBAKE"};
                P -> {ok, P}
            end;
        P -> executable(P, "BEAMBAKE=" ++ P)
    end;
find_binary(Configured, Key) ->
    P = unicode:characters_to_list(Configured),
    executable(P, Key ++ " = " ++ P).

executable(P, Where) ->
    Found = case lists:member($/, P) of
                true -> P;
                false -> os:find_executable(P)
            end,
    case Found =/= false andalso file:read_file_info(Found) of
        {ok, #file_info{type = regular, mode = Mode}} when Mode band 8#111 =/= 0 ->
            {ok, Found};
        _ ->
            {error, "the beambake binary named by " ++ Where ++ " is not an executable file"}
    end.

%% @doc The recipe (as terms) for the release at `Source' (absolute): the user's section
%% with `name' (default: the release's name), `target' (default `microvm'; the command
%% line's `--target' wins) and `[release] source' filled in.
-spec recipe(beambake_recipe:table(), #{source := string(), name := string(),
                                         target => undefined | string()}) ->
          {ok, list()} | {error, string()}.
recipe(Section, Opts) when is_map(Section) ->
    recipe(lists:sort(maps:to_list(Section)), Opts);
recipe(Section, #{source := Source, name := Name} = Opts) when is_list(Section) ->
    case lists:all(fun(E) -> is_tuple(E) andalso tuple_size(E) =:= 2 end, Section) of
        false ->
            {error, "expected a list of {Key, Value} (the recipe's keys and tables), got "
             ++ lists:flatten(io_lib:format("~tp", [Section]))};
        true ->
            Get = fun(K, Default) -> proplists:get_value(K, Section, Default) end,
            Target = case maps:get(target, Opts, undefined) of
                         undefined -> Get(target, microvm);
                         T -> T
                     end,
            Release = case Get(release, []) of
                          R when is_list(R) -> [{source, Source} | proplists:delete(source, R)];
                          R when is_map(R) -> [{source, Source} | maps:to_list(maps:remove(source, R))];
                          R -> R
                      end,
            Rest = [E || {K, _} = E <- Section, not lists:member(K, [name, target, release])],
            {ok, [{name, Get(name, Name)}, {target, Target}, {release, Release} | Rest]}
    end;
recipe(Section, _) ->
    {error, "expected a list of {Key, Value} (the recipe's keys and tables), got "
     ++ lists:flatten(io_lib:format("~tp", [Section]))}.

%% @doc Writes `Recipe' as TOML to `Path' (directories made): `{ok, Text}'.
-spec write_recipe(string(), list()) -> {ok, binary()} | {error, string()}.
write_recipe(Path, Recipe) ->
    case beambake_recipe:to_toml(Recipe) of
        {ok, Toml} ->
            Text = <<"# Written by beambake's rebar3 plugin / mix task from the project's "
                     "beambake section;\n# rewritten on every run.\n", Toml/binary>>,
            ok = filelib:ensure_dir(Path),
            case file:write_file(Path, Text) of
                ok -> {ok, Text};
                {error, E} -> {error, Path ++ ": " ++ file:format_error(E)}
            end;
        {error, _} = E -> E
    end.

%% @doc The command line for `Command' (build | smoke | boot | inspect) on `Input' (the
%% recipe, or the release dir for inspect), from parsed options (proplist: out, verbose,
%% json, junit, kernel, modules, accel, count, no_bake); options `Command' does not take
%% are left out.
-spec args(atom(), string(), list()) -> [string()].
args(Command, Input, Opts) ->
    Takes = #{build => [out, verbose, kernel, modules, no_bake, json],
              smoke => [out, verbose, kernel, modules, no_bake, junit, json],
              boot => [out, verbose, kernel, modules, accel, count],
              inspect => [verbose, json]},
    Allowed = maps:get(Command, Takes),
    [atom_to_list(Command), Input
     | lists:append([flag(K, V) || {K, V} <- Opts, lists:member(K, Allowed), V =/= false])].

flag(verbose, true) -> ["-v"];
flag(K, true) -> ["--" ++ dashed(K)];
flag(K, V) when is_integer(V) -> ["--" ++ dashed(K), integer_to_list(V)];
flag(K, V) -> ["--" ++ dashed(K), unicode:characters_to_list(V)].

dashed(K) -> [case C of $_ -> $-; _ -> C end || C <- atom_to_list(K)].

%% @doc Runs `Bin Args', every output line but the error given to `Print' as it comes;
%% `ok', or `{error, Status, ErrorText}' (ErrorText: what follows `beambake: error: ').
-spec run(string(), [string()], fun((string()) -> any())) ->
          ok | {error, integer(), string()}.
run(Bin, Args, Print) ->
    Port = open_port({spawn_executable, Bin},
                     [{args, Args}, exit_status, stderr_to_stdout, {line, 16384}, hide]),
    collect(Port, Args, Print, [], none).

collect(Port, Args, Print, Partial, Err) ->
    receive
        {Port, {data, {noeol, Chunk}}} ->
            collect(Port, Args, Print, [Partial, Chunk], Err);
        {Port, {data, {eol, Chunk}}} ->
            Line = unicode:characters_to_list(list_to_binary([Partial, Chunk])),
            case {Err, string:prefix(Line, "beambake: error: ")} of
                {none, nomatch} ->
                    Print(Line),
                    collect(Port, Args, Print, [], none);
                {none, Rest} -> collect(Port, Args, Print, [], [Rest]);
                {_, _} -> collect(Port, Args, Print, [], [Line | Err])
            end;
        {Port, {exit_status, 0}} -> ok;
        {Port, {exit_status, S}} ->
            Text = case Err of
                       none -> "beambake " ++ hd(Args) ++ " failed";
                       _ -> lists:flatten(lists:join("\n", lists:reverse(Err)))
                   end,
            {error, S, Text}
    end.

%% @doc Runs `Bin Args' on this terminal (stdin, stdout, stderr inherited: `boot's
%% console): its exit status. A port program runs in a session of its own, so a Ctrl-C
%% that ends rebar3 or mix would not reach it: it gets SIGTERM when its parent goes
%% (`setpriv --pdeathsig', util-linux), and beambake frees the VM.
-spec run_interactive(string(), [string()]) -> integer().
run_interactive(Bin, Args) ->
    {Exe, Argv} = case os:find_executable("setpriv") of
                      false -> {Bin, Args};
                      Setpriv -> {Setpriv, ["--pdeathsig", "TERM", "--", Bin | Args]}
                  end,
    Port = open_port({spawn_executable, Exe}, [{args, Argv}, exit_status, nouse_stdio]),
    receive {Port, {exit_status, S}} -> S end.

%% @doc beambake's error about the recipe at `RecipePath' (whose text is `Text') as an
%% error about `Origin' (e.g. "rebar.config: {beambake, ...}"): a message naming a line
%% of the recipe keeps its words (the key, its table, the closest valid key) without the
%% generated file's line; other messages about the recipe name the file.
-spec explain(string(), string(), binary(), string()) -> string().
explain(Error, RecipePath, Text, Origin) ->
    case string:prefix(Error, RecipePath ++ ": ") of
        nomatch -> Error;
        Rest ->
            case re:run(Rest, "^line ([0-9]+): (.*)$",
                        [{capture, all_but_first, list}, dotall, unicode]) of
                {match, [N, Msg]} ->
                    Lines = string:split(unicode:characters_to_list(Text), "\n", all),
                    Src = string:trim(lists:nth(list_to_integer(N), Lines ++ [""])),
                    Origin ++ ": " ++ drop_suffix(Msg, ": " ++ Src);
                nomatch ->
                    Origin ++ ": " ++ Rest ++ " (in " ++ RecipePath ++ ", written from it)"
            end
    end.

drop_suffix(S, Suffix) ->
    case lists:suffix(Suffix, S) of
        true -> lists:sublist(S, length(S) - length(Suffix));
        false -> S
    end.
