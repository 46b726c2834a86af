-module(beambake_switch_tests).
-include_lib("eunit/include/eunit.hrl").

-define(BCAST, <<255, 255, 255, 255, 255, 255>>).

mac(N) -> <<16#52, 16#54, 0, 16#bb, 0, N>>.

frame(Dst, Src, Payload) -> <<Dst/binary, Src/binary, 16#08, 16#00, Payload/binary>>.

%% A port: a process attached to Sw that forwards what it receives to the test process
%% and sends what it is told to.
port(Sw, Name) ->
    Test = self(),
    P = spawn_link(fun() ->
        ok = beambake_switch:attach(Sw),
        Test ! {attached, self()},
        port_loop(Sw, Name, Test)
    end),
    receive {attached, P} -> P after 1000 -> error(attach_timeout) end.

port_loop(Sw, Name, Test) ->
    receive
        {send, F} -> beambake_switch:send(Sw, F), port_loop(Sw, Name, Test);
        {beambake_switch, Sw, {frame, F}} -> Test ! {got, Name, F}, port_loop(Sw, Name, Test);
        stop -> ok
    end.

sync(Sw) -> beambake_switch:stats(Sw).

%% A switch with the test's mailbox emptied of what earlier tests left.
new_switch(Opts) ->
    flush(),
    beambake_switch:start_link(Opts).

flush() ->
    receive _ -> flush() after 0 -> ok end.   % a call: every cast before it is handled

got(Name) ->
    receive {got, Name, F} -> F after 500 -> none end.

nothing(Name) ->
    receive {got, Name, F} -> error({unexpected, Name, F}) after 100 -> ok end.

learns_forwards_unicast_and_floods_the_unknown_test() ->
    {ok, Sw} = new_switch(#{}),
    A = port(Sw, a), B = port(Sw, b), C = port(Sw, c),
    %% a -> unknown b: flooded to b and c, not back to a; a's MAC learned
    F1 = frame(mac(2), mac(1), <<"hello">>),
    A ! {send, F1}, sync(Sw),
    ?assertEqual(F1, got(b)), ?assertEqual(F1, got(c)), nothing(a),
    %% b answers a: a is known now, only a gets it
    F2 = frame(mac(1), mac(2), <<"hi">>),
    B ! {send, F2}, sync(Sw),
    ?assertEqual(F2, got(a)), nothing(c), nothing(b),
    %% a -> b: known, b only
    F3 = frame(mac(2), mac(1), <<"again">>),
    A ! {send, F3}, sync(Sw),
    ?assertEqual(F3, got(b)), nothing(c),
    ?assertMatch([{<<_:48>>, A, _}, {<<_:48>>, B, _}], beambake_switch:mac_table(Sw)),
    #{frames := 3, flooded := 1, unicast := 2, ports := 3} = beambake_switch:stats(Sw),
    [P ! stop || P <- [A, B, C]],
    beambake_switch:stop(Sw).

broadcast_and_multicast_go_everywhere_and_are_never_learned_test() ->
    {ok, Sw} = new_switch(#{}),
    A = port(Sw, a), _B = port(Sw, b), _C = port(Sw, c),
    ARP = frame(?BCAST, mac(1), <<"who-has">>),
    A ! {send, ARP}, sync(Sw),
    ?assertEqual(ARP, got(b)), ?assertEqual(ARP, got(c)), nothing(a),
    Multi = <<16#01, 0, 16#5e, 0, 0, 1>>,
    %% a multicast source address is never learned
    A ! {send, frame(mac(9), Multi, <<>>)}, sync(Sw),
    ?assertNotEqual(none, got(b)), ?assertNotEqual(none, got(c)),
    ?assertEqual([mac(1)], [M || {M, _, _} <- beambake_switch:mac_table(Sw)]),
    beambake_switch:stop(Sw).

addresses_age_out_test() ->
    {ok, Sw} = new_switch(#{aging_ms => 50}),
    A = port(Sw, a), _B = port(Sw, b), _C = port(Sw, c),
    A ! {send, frame(?BCAST, mac(1), <<>>)}, sync(Sw),
    _ = got(b), _ = got(c),
    ?assertMatch([_], beambake_switch:mac_table(Sw)),
    timer:sleep(80),
    ?assertEqual([], beambake_switch:mac_table(Sw)),
    %% so a frame for it is flooded again
    F = frame(mac(1), mac(3), <<"x">>),
    beambake_switch:inject(Sw, F), sync(Sw),
    ?assertEqual(F, got(a)), ?assertEqual(F, got(b)), ?assertEqual(F, got(c)),
    beambake_switch:stop(Sw).

a_port_that_exits_is_detached_and_forgotten_test() ->
    {ok, Sw} = new_switch(#{}),
    A = port(Sw, a), B = port(Sw, b),
    B ! {send, frame(?BCAST, mac(2), <<>>)}, sync(Sw),
    _ = got(a),
    unlink(B), exit(B, kill),
    timer:sleep(50),
    ?assertEqual([], beambake_switch:mac_table(Sw)),
    #{ports := 1} = beambake_switch:stats(Sw),
    A ! stop,
    beambake_switch:stop(Sw).

subscribers_see_every_frame_and_injected_frames_are_not_learned_test() ->
    {ok, Sw} = new_switch(#{}),
    A = port(Sw, a), _B = port(Sw, b),
    ok = beambake_switch:subscribe(Sw),
    F = frame(mac(2), mac(1), <<"watched">>),
    A ! {send, F}, sync(Sw),
    receive {beambake_switch, Sw, {seen, A, F}} -> ok after 500 -> error(not_seen) end,
    G = frame(mac(1), mac(7), <<"from nowhere">>),
    beambake_switch:inject(Sw, G), sync(Sw),
    ?assertEqual(G, got(a)),
    receive {beambake_switch, Sw, {seen, injected, G}} -> ok after 500 -> error(not_seen) end,
    ?assertEqual([mac(1)], [M || {M, _, _} <- beambake_switch:mac_table(Sw)]),
    #{injected := 1} = beambake_switch:stats(Sw),
    beambake_switch:stop(Sw).

short_frames_and_strangers_are_dropped_test() ->
    {ok, Sw} = new_switch(#{}),
    A = port(Sw, a), _B = port(Sw, b),
    A ! {send, <<1, 2, 3>>}, sync(Sw),
    nothing(b),
    %% this process is not attached: its frame goes nowhere
    beambake_switch:send(Sw, frame(?BCAST, mac(5), <<>>)), sync(Sw),
    nothing(b), nothing(a),
    #{dropped := 2, frames := 0} = beambake_switch:stats(Sw),
    beambake_switch:stop(Sw).

format_mac_test() ->
    ?assertEqual("52:54:00:bb:00:0a", beambake_switch:format_mac(mac(10))).
