%% Helpers the VM tests share (beambake_vm_tests, beambake_libvirt_tests): waiting for
%% a console line and pinging over a switch until the guest answers.
-module(beambake_test_vm).
-export([ping_retry/3, wait_console/3]).

%% beambake_vm:ping/2 until it answers, at most N more times, 500 ms apart.
ping_retry(From, To, 0) -> beambake_vm:ping(From, To);
ping_retry(From, To, N) ->
    case beambake_vm:ping(From, To) of
        {ok, Us} -> {ok, Us};
        {error, _} -> timer:sleep(500), ping_retry(From, To, N - 1)
    end.

%% The first console line of `Vm' (the caller subscribed) holding `Want' (a string or a
%% binary), within `Timeout' ms: {ok, Line} or {timeout, Want}.
wait_console(Vm, Want, Timeout) ->
    wait_until(Vm, Want, erlang:monotonic_time(millisecond) + Timeout).

wait_until(Vm, Want, Deadline) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {beambake_vm, Vm, {console, Line}} ->
            case string:find(Line, Want) of
                nomatch -> wait_until(Vm, Want, Deadline);
                _ -> {ok, Line}
            end
    after Left ->
        {timeout, Want}
    end.
