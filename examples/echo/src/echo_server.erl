%% A TCP echo server: every byte received on a connection is sent back.
-module(echo_server).
-export([start_link/1, init/2, port/1]).

start_link(Port) ->
    proc_lib:start_link(?MODULE, init, [self(), Port]).

init(Parent, Port) ->
    Opts = [binary, {active, false}, {reuseaddr, true}, {packet, raw}],
    case gen_tcp:listen(Port, Opts) of
        {ok, Listen} ->
            proc_lib:init_ack(Parent, {ok, self()}),
            io:format("Echo server started~n"),
            accept_loop(Listen);
        {error, Reason} ->
            proc_lib:init_ack(Parent, {error, Reason})
    end.

%% The listening port (useful when started on port 0).
port(Pid) ->
    Pid ! {port, self()},
    receive {port, Pid, P} -> P after 5000 -> error(timeout) end.

accept_loop(Listen) ->
    case gen_tcp:accept(Listen, 200) of
        {ok, Sock} ->
            Pid = spawn(fun() -> receive go -> loop(Sock) end end),
            ok = gen_tcp:controlling_process(Sock, Pid),
            Pid ! go;
        {error, timeout} ->
            ok
    end,
    receive
        {port, From} ->
            {ok, P} = inet:port(Listen),
            From ! {port, self(), P}
    after 0 ->
        ok
    end,
    accept_loop(Listen).

loop(Sock) ->
    case gen_tcp:recv(Sock, 0) of
        {ok, Data} ->
            ok = gen_tcp:send(Sock, Data),
            loop(Sock);
        {error, _} ->
            gen_tcp:close(Sock)
    end.
