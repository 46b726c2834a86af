%% @doc libvirt from Erlang: a connection is a gen_server owning one port program,
%% `beambake libvirt-port URI' (the `virt' crate over libvirt's client library).
%%
%% The wire is `{packet, 4}' frames of `term_to_binary' terms: requests `{Ref, Call}',
%% replies `{Ref, {ok, Value}} | {Ref, {error, {Code, Message}}}' with `Code' libvirt's
%% error number and `Message' a binary; reference 0 is the connection itself, sent
%% once when the port starts. Calls run in the port, each on its own thread, and the
%% server answers callers asynchronously (`gen_server:reply/2'), so a slow libvirt
%% call (a domain starting under TCG) blocks neither the server, nor other callers,
%% nor any scheduler.
%%
%% Owns: the port (closed on `close/1', when the process that connected dies, or when
%% the server stops) and the pending calls: when the port dies, each pending caller gets
%% `{error, {port_exit, Status}}' and the server stops.
%% Must not: touch libvirt itself, build or boot images, or outlive its owner.
%%
%% The beambake binary is, in order: the `BEAMBAKE' environment variable, `beambake'
%% on `PATH', the application environment `{beambake, [{binary, Path}]}'.
-module(beambake_libvirt).
-behaviour(gen_server).

-export([connect/1, connect/2, close/1,
         list_domains/1, list_domains/2,
         define_xml/2, define_xml/3,
         create/2, create/3,
         lookup_by_name/2, lookup_by_name/3,
         lookup_by_id/2, lookup_by_id/3,
         get_info/2, get_info/3,
         get_xml_desc/2, get_xml_desc/3,
         suspend/2, suspend/3,
         resume/2, resume/3,
         shutdown/2, shutdown/3,
         destroy/2, destroy/3,
         undefine/2, undefine/3,
         find_binary/0, port_os_pid/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TIMEOUT, 60000).

-type conn() :: pid().
-type name() :: binary() | string().
-export_type([name/0]).
-type error() :: {error, {integer(), binary()} | {port_exit, integer()} | timeout
                         | closed | term()}.
-export_type([conn/0]).

%% @doc Connects to libvirt at `Uri' (e.g. `"qemu:///system"'). The connection is
%% closed when the calling process dies.
-spec connect(string() | binary()) -> {ok, conn()} | error().
connect(Uri) -> connect(Uri, []).

%% @doc Options: `{binary, Path}' (the beambake binary, instead of the lookup below),
%% `{timeout, Ms}' (for the connection, default 60 s).
-spec connect(string() | binary(), [{binary, file:filename()} | {timeout, timeout()}]) ->
          {ok, conn()} | error().
connect(Uri, Opts) ->
    Bin = case proplists:get_value(binary, Opts) of
              undefined -> find_binary();
              Path -> {ok, Path}
          end,
    case Bin of
        {ok, B} ->
            Timeout = proplists:get_value(timeout, Opts, ?TIMEOUT),
            {ok, Pid} = gen_server:start(?MODULE, {B, to_list(Uri), self()}, []),
            %% The server answers when the port has said whether it connected.
            try gen_server:call(Pid, connected, Timeout)
            catch exit:{timeout, _} -> close(Pid), {error, timeout};
                  exit:{_, _} -> {error, closed}
            end;
        Error -> Error
    end.

%% @doc The beambake binary: `$BEAMBAKE', else `beambake' on `PATH', else the
%% application environment's `binary'.
-spec find_binary() -> {ok, file:filename()} | {error, {no_beambake, string()}}.
find_binary() ->
    FromEnv = case os:getenv("BEAMBAKE") of
                  false -> false;
                  "" -> false;
                  P -> P
              end,
    case FromEnv of
        false ->
            case os:find_executable("beambake") of
                false ->
                    case application:get_env(beambake, binary) of
                        {ok, P2} -> {ok, P2};
                        undefined ->
                            {error, {no_beambake,
                                     "no beambake binary: set BEAMBAKE to its path, put beambake "
                                     "on PATH, or set the application environment "
                                     "{beambake, [{binary, Path}]}"}}
                    end;
                P1 -> {ok, P1}
            end;
        P0 ->
            case filelib:is_regular(P0) of
                true -> {ok, P0};
                false -> {error, {no_beambake, "BEAMBAKE=" ++ P0 ++ ": no such file"}}
            end
    end.

%% @doc Closes the connection (the port ends when its input closes).
-spec close(conn()) -> ok.
close(Conn) ->
    try gen_server:stop(Conn) catch exit:_ -> ok end.

%% @doc Every domain, active and inactive: `[{Id | undefined, Name}]'.
list_domains(C) -> list_domains(C, ?TIMEOUT).
list_domains(C, T) -> call(C, list_domains, T).

%% @doc Defines (persistently) the domain of `Xml'; the value is the domain, a map
%% `#{name, id, uuid, active}'.
define_xml(C, Xml) -> define_xml(C, Xml, ?TIMEOUT).
define_xml(C, Xml, T) -> call(C, {define_xml, to_bin(Xml)}, T).

%% @doc Starts a defined domain; the value is the domain (with its id).
create(C, Name) -> create(C, Name, ?TIMEOUT).
create(C, Name, T) -> call(C, {create, to_bin(Name)}, T).

lookup_by_name(C, Name) -> lookup_by_name(C, Name, ?TIMEOUT).
lookup_by_name(C, Name, T) -> call(C, {lookup_by_name, to_bin(Name)}, T).

lookup_by_id(C, Id) -> lookup_by_id(C, Id, ?TIMEOUT).
lookup_by_id(C, Id, T) when is_integer(Id) -> call(C, {lookup_by_id, Id}, T).

%% @doc `#{state, max_mem_kib, memory_kib, vcpus, cpu_time_ns}', `state' one of
%% `running', `paused', `shutoff', `shutdown', `crashed', `blocked', `pmsuspended',
%% `nostate'.
get_info(C, Name) -> get_info(C, Name, ?TIMEOUT).
get_info(C, Name, T) -> call(C, {get_info, to_bin(Name)}, T).

get_xml_desc(C, Name) -> get_xml_desc(C, Name, ?TIMEOUT).
get_xml_desc(C, Name, T) -> call(C, {get_xml_desc, to_bin(Name)}, T).

%% The actions' value is the domain's name.
suspend(C, Name) -> suspend(C, Name, ?TIMEOUT).
suspend(C, Name, T) -> call(C, {suspend, to_bin(Name)}, T).
resume(C, Name) -> resume(C, Name, ?TIMEOUT).
resume(C, Name, T) -> call(C, {resume, to_bin(Name)}, T).
shutdown(C, Name) -> shutdown(C, Name, ?TIMEOUT).
shutdown(C, Name, T) -> call(C, {shutdown, to_bin(Name)}, T).
destroy(C, Name) -> destroy(C, Name, ?TIMEOUT).
destroy(C, Name, T) -> call(C, {destroy, to_bin(Name)}, T).
undefine(C, Name) -> undefine(C, Name, ?TIMEOUT).
undefine(C, Name, T) -> call(C, {undefine, to_bin(Name)}, T).

%% @doc The OS process id of the connection's port program (diagnostics, tests).
-spec port_os_pid(conn()) -> {ok, integer()} | error().
port_os_pid(Conn) ->
    try gen_server:call(Conn, port_os_pid)
    catch exit:_ -> {error, closed}
    end.

-spec call(conn(), term(), timeout()) -> {ok, term()} | error().
call(Conn, Req, Timeout) ->
    try gen_server:call(Conn, {call, Req}, Timeout)
    catch
        exit:{timeout, _} -> {error, timeout};
        exit:{noproc, _} -> {error, closed};
        exit:{normal, _} -> {error, closed};
        exit:{{port_exit, N}, _} -> {error, {port_exit, N}}
    end.

to_bin(B) when is_binary(B) -> B;
to_bin(L) when is_list(L) -> unicode:characters_to_binary(L).

to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(L) when is_list(L) -> L.

%% --- gen_server ------------------------------------------------------------------

%% `waiter': the caller of connect/2 until the port's first packet (reference 0).
-record(st, {port, owner, next = 1, pending = #{}, waiter, failed}).

init({Bin, Uri, Owner}) ->
    process_flag(trap_exit, true),
    erlang:monitor(process, Owner),
    try open_port({spawn_executable, Bin},
                  [{args, ["libvirt-port", Uri]}, {packet, 4}, binary, exit_status,
                   use_stdio]) of
        Port -> {ok, #st{port = Port, owner = Owner}}
    catch
        error:Reason -> {ok, #st{owner = Owner, failed = {cannot_start, Bin, Reason}}}
    end.

handle_call(connected, _From, #st{failed = Failed} = S) when Failed =/= undefined ->
    {stop, normal, {error, Failed}, S};
handle_call(connected, From, #st{waiter = undefined} = S) ->
    {noreply, S#st{waiter = From}};
handle_call(_, _From, #st{waiter = W} = S) when W =/= undefined ->
    {reply, {error, connecting}, S};
handle_call({call, Req}, From, #st{port = Port, next = Ref, pending = P} = S) ->
    true = port_command(Port, term_to_binary({Ref, Req})),
    {noreply, S#st{next = Ref + 1, pending = P#{Ref => From}}};
handle_call(port_os_pid, _From, #st{port = Port} = S) ->
    {os_pid, Pid} = erlang:port_info(Port, os_pid),
    {reply, {ok, Pid}, S};
handle_call(_, _From, S) ->
    {reply, {error, badarg}, S}.

handle_cast(_, S) -> {noreply, S}.

handle_info({Port, {data, Data}}, #st{port = Port, waiter = W} = S) when W =/= undefined ->
    case binary_to_term(Data) of
        {0, {ok, _Uri}} ->
            gen_server:reply(W, {ok, self()}),
            {noreply, S#st{waiter = undefined}};
        {0, {error, E}} ->
            %% The port exits after saying why: wait for that, bounded.
            receive {Port, {exit_status, _}} -> ok after 5000 -> ok end,
            gen_server:reply(W, {error, E}),
            {stop, normal, S#st{waiter = undefined, port = undefined}};
        Other ->
            gen_server:reply(W, {error, {unexpected, Other}}),
            {stop, normal, S#st{waiter = undefined}}
    end;
handle_info({Port, {data, Data}}, #st{port = Port, pending = P} = S) ->
    case binary_to_term(Data) of
        {Ref, Reply} when is_map_key(Ref, P) ->
            gen_server:reply(maps:get(Ref, P), Reply),
            {noreply, S#st{pending = maps:remove(Ref, P)}};
        _ ->
            {noreply, S}
    end;
handle_info({Port, {exit_status, N}}, #st{port = Port, pending = P, waiter = W} = S) ->
    W =:= undefined orelse gen_server:reply(W, {error, {port_exit, N}}),
    [gen_server:reply(From, {error, {port_exit, N}}) || From <- maps:values(P)],
    {stop, normal, S#st{port = undefined, pending = #{}}};
handle_info({'DOWN', _, process, Owner, _}, #st{owner = Owner} = S) ->
    {stop, normal, S};
handle_info({'EXIT', Port, _}, #st{port = Port} = S) ->
    {noreply, S};
handle_info(_, S) ->
    {noreply, S}.

terminate(_, #st{port = undefined}) -> ok;
terminate(_, #st{failed = F}) when F =/= undefined -> ok;
terminate(_, #st{port = Port, pending = P}) ->
    [gen_server:reply(From, {error, closed}) || From <- maps:values(P)],
    catch port_close(Port),
    ok.
