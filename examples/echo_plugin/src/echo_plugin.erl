%% A TCP echo server on port 8080: what arrives is sent back.
-module(echo_plugin).
-behaviour(application).

-export([start/2, stop/1, accept/1]).

start(_Type, _Args) ->
    {ok, Listen} = gen_tcp:listen(8080, [binary, {active, false}, {reuseaddr, true},
                                         {packet, raw}]),
    Pid = spawn_link(?MODULE, accept, [Listen]),
    ok = gen_tcp:controlling_process(Listen, Pid),
    {ok, Pid}.

stop(_State) -> ok.

accept(Listen) ->
    {ok, Sock} = gen_tcp:accept(Listen),
    spawn(fun() -> echo(Sock) end),
    accept(Listen).

echo(Sock) ->
    case gen_tcp:recv(Sock, 0) of
        {ok, Data} -> ok = gen_tcp:send(Sock, Data), echo(Sock);
        {error, _} -> gen_tcp:close(Sock)
    end.
