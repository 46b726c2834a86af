%% beambake_epmd: the port mapper a rumprun node runs inside itself. A real node
%% (peer) started with -epmd_module beambake_epmd registers through it, and its
%% EPMD listener answers PORT_PLEASE2 and NAMES the way epmd does, on loopback.
-module(beambake_epmd_tests).
-include_lib("eunit/include/eunit.hrl").

reply_test() ->
    Nodes = [{"echo", 40123}],
    ?assertEqual(<<$w, 0, 40123:16, $M, 0, 6:16, 5:16, 4:16, "echo", 0:16>>,
                 beambake_epmd:reply(<<$z, "echo">>, Nodes, 4369)),
    ?assertEqual(<<$w, 1>>, beambake_epmd:reply(<<$z, "other">>, Nodes, 4369)),
    ?assertEqual(<<4369:32, "name echo at port 40123\n">>,
                 beambake_epmd:reply(<<$n>>, Nodes, 4369)),
    %% ALIVE2_REQ (another node registering) gets no answer: the node is alone.
    ?assertEqual(<<>>, beambake_epmd:reply(<<$x, 1:16, $M, 0, 6:16, 5:16>>, Nodes, 4369)).

a_node_registers_through_it_and_others_find_its_port_test_() ->
    {timeout, 60, fun a_node_registers/0}.

a_node_registers() ->
    EpmdPort = free_port(),
    Ebin = filename:dirname(code:which(beambake_epmd)),
    Cookie = "c" ++ integer_to_list(erlang:unique_integer([positive])),
    {ok, Peer, Node} =
        peer:start(#{name => beambake_epmd_peer, host => "127.0.0.1", longnames => true,
                     connection => standard_io,
                     env => [{"ERL_EPMD_PORT", integer_to_list(EpmdPort)}],
                     args => ["-epmd_module", "beambake_epmd", "-start_epmd", "false", "-pa", Ebin,
                              "-setcookie", Cookie]}),
    try
        ?assertEqual('beambake_epmd_peer@127.0.0.1', Node),
        ?assertEqual(Node, peer:call(Peer, erlang, node, [])),
        {ok, [{"beambake_epmd_peer", DistPort}]} =
            peer:call(Peer, beambake_epmd, names, ["127.0.0.1"]),
        %% What a remote node's erl_epmd asks for: PORT_PLEASE2_REQ.
        <<$w, 0, DistPort:16, $M, 0, 6:16, 5:16, 18:16, "beambake_epmd_peer", 0:16>> =
            ask(EpmdPort, <<$z, "beambake_epmd_peer">>),
        ?assertEqual(<<$w, 1>>, ask(EpmdPort, <<$z, "nobody">>)),
        %% The port it gave is the node's distribution listener.
        {ok, S} = gen_tcp:connect({127, 0, 0, 1}, DistPort, [binary, {active, false}]),
        ok = gen_tcp:close(S),
        <<EpmdPort:32, Names/binary>> = ask(EpmdPort, <<$n>>),
        ?assertEqual(iolist_to_binary(io_lib:format("name beambake_epmd_peer at port ~p~n",
                                                    [DistPort])), Names)
    after
        peer:stop(Peer)
    end.

ask(Port, Req) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}, {packet, 0}]),
    ok = gen_tcp:send(S, [<<(byte_size(Req)):16>>, Req]),
    Reply = recv_all(S, <<>>),
    gen_tcp:close(S),
    Reply.

recv_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 5000) of
        {ok, B} -> recv_all(S, <<Acc/binary, B/binary>>);
        {error, closed} -> Acc
    end.

free_port() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, P} = inet:port(L),
    gen_tcp:close(L),
    P.
