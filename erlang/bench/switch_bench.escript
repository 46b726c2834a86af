#!/usr/bin/env escript
%%! -noshell
%% The Erlang switch's throughput between two real guests (`cargo xtask bench` runs it):
%% two microvms of IMAGE_DIR (the echo release, its console the Erlang shell) on one
%% beambake_switch; guest A streams MIB MiB to guest B's TCP echo server and reads the
%% echo back, so every byte crosses the switch twice. Prints one line:
%% `switch: ... frames/s ... MB/s` (from the switch's own counters over the guest-timed
%% transfer). Usage: switch_bench.escript EBIN_DIR IMAGE_DIR [MIB]
main([Ebin, Dir | Rest]) ->
    true = code:add_patha(Ebin),
    Mib = case Rest of [M] -> list_to_integer(M); [] -> 8 end,
    {ok, Sw} = beambake_switch:start(),
    {ok, A} = beambake_vm:start(Dir, [{switch, Sw}, {ip, {"10.0.126.2", 24, none}},
                                       {node, "echo@10.0.126.2"}]),
    {ok, B} = beambake_vm:start(Dir, [{switch, Sw}, {ip, {"10.0.126.3", 24, none}},
                                       {node, "echo@10.0.126.3"}]),
    [ok = wait_for(Vm, <<"Echo server started">>, 300000) || Vm <- [A, B]],
    {ok, _} = beambake_vm:ping(A, "10.0.126.3", 5000),
    Before = beambake_switch:stats(Sw),
    Chunks = Mib * 16,
    beambake_vm:send(A, lists:flatten(io_lib:format(
        "begin {ok,S}=gen_tcp:connect({10,0,126,3},8080,[binary,{active,false}],10000), "
        "C=binary:copy(<<7>>,65536), Me=self(), T0=erlang:monotonic_time(microsecond), "
        "spawn(fun() -> Rx=fun R(0)->ok; R(L)->{ok,D}=gen_tcp:recv(S,0,60000), "
        "R(L-byte_size(D)) end, Rx(~b*65536), Me ! done end), "
        "[ok=gen_tcp:send(S,C) || _ <- lists:seq(1,~b)], receive done -> ok end, "
        "io:format(\"BENCH us=~~b~~n\",[erlang:monotonic_time(microsecond)-T0]) end.",
        [Chunks, Chunks]))),
    {ok, UsBin} = wait_result(A, 600000),
    After = beambake_switch:stats(Sw),
    Us = binary_to_integer(string:trim(UsBin)),
    Secs = Us / 1.0e6,
    Frames = maps:get(frames, After) - maps:get(frames, Before),
    Bytes = maps:get(bytes, After) - maps:get(bytes, Before),
    io:format("switch: ~b MiB echoed A->B->A in ~.2f s (guest clock, TCG): ~b frames/s, "
              "~.2f MB/s through the switch (~b frames, ~b bytes), ~.2f MB/s payload each way~n",
              [Mib, Secs, round(Frames / Secs), Bytes / Secs / 1.0e6, Frames, Bytes,
               Mib * 1048576 / Secs / 1.0e6]),
    [beambake_vm:stop(Vm) || Vm <- [A, B]],
    halt(0);
main(_) ->
    io:format(standard_error, "usage: switch_bench.escript EBIN_DIR IMAGE_DIR [MIB]~n", []),
    halt(2).

wait_for(Vm, Want, Timeout) ->
    case wait_line(Vm, Want, Timeout) of
        {ok, _} -> ok;
        Other -> Other
    end.

%% The line the guest prints (not the echo of the command typed).
wait_result(Vm, Timeout) ->
    receive
        {beambake_vm, Vm, {console, <<"BENCH us=", Us/binary>>}} -> {ok, Us};
        {beambake_vm, Vm, {console, _}} -> wait_result(Vm, Timeout)
    after Timeout -> timeout
    end.

wait_line(Vm, Want, Timeout) ->
    receive
        {beambake_vm, Vm, {console, Line}} ->
            case binary:match(Line, Want) of
                nomatch -> wait_line(Vm, Want, Timeout);
                _ -> {ok, Line}
            end
    after Timeout -> {timeout, Want}
    end.
