%% EUnit tests of the echo example itself, run by `cargo xtask test`.
-module(echo_server_tests).
-include_lib("eunit/include/eunit.hrl").

echo_round_trip_test() ->
    {ok, Pid} = echo_server:start_link(0),
    Port = echo_server:port(Pid),
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
    ok = gen_tcp:send(S, <<"hello there!\n">>),
    {ok, <<"hello there!\n">>} = gen_tcp:recv(S, 13, 5000),
    ok = gen_tcp:close(S),
    unlink(Pid),
    exit(Pid, kill).

two_clients_test() ->
    {ok, Pid} = echo_server:start_link(0),
    Port = echo_server:port(Pid),
    Conns = [begin
                 {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
                 S
             end || _ <- [1, 2]],
    [ok = gen_tcp:send(S, integer_to_binary(I)) || {I, S} <- lists:zip([1, 2], Conns)],
    [{ok, <<"1">>}, {ok, <<"2">>}] = [gen_tcp:recv(S, 1, 5000) || S <- Conns],
    unlink(Pid),
    exit(Pid, kill).

http_test() ->
    {ok, Pid} = echo_http:start_link(0),
    unlink(Pid),
    exit(Pid, kill).
