%% Real VMs driven from Erlang: the echo release (its console the Erlang shell) built by
%% beambake as a microvm, three VMs on one beambake_switch. Needs the beambake binary
%% (`BEAMBAKE`, set by `cargo xtask test`) and the checkout (`BEAMBAKE_ROOT`); without
%% them the tests are skipped and the skip is recorded in `BEAMBAKE_SKIP_LOG`.
-module(beambake_vm_tests).
-include_lib("eunit/include/eunit.hrl").

-define(BOOT_MS, 180000).

vm_test_() ->
    case env() of
        {ok, Bin, Root} ->
            {setup,
             fun() -> {build(Bin, Root, "erlang/test/echo-shell.toml", "echo-shell"),
                       build(Bin, Root, "recipes/echo-uml.toml", "echo-uml")} end,
             fun({Dir, Uml}) ->
                 file:del_dir_r(filename:dirname(Dir)),
                 file:del_dir_r(filename:dirname(Uml))
             end,
             fun({Dir, Uml}) ->
                 [{timeout, 120, fun() -> bad_image_is_refused(Root) end},
                  {timeout, 300, fun() -> owner_death_kills_the_vm(Dir) end},
                  {timeout, 300, fun() -> stop_while_the_release_starts(Dir) end},
                  {timeout, 600, fun() -> three_vms_on_one_switch(Dir) end},
                  {timeout, 300, fun() -> uml_and_microvm_share_a_switch(Uml, Dir) end}]
             end};
        {skip, Why} ->
            skip(Why),
            []
    end.

env() ->
    case {os:getenv("BEAMBAKE"), os:getenv("BEAMBAKE_ROOT")} of
        {B, R} when is_list(B), is_list(R) -> {ok, B, R};
        _ -> {skip, "BEAMBAKE and BEAMBAKE_ROOT not set (cargo xtask test sets them)"}
    end.

skip(Why) ->
    io:format(user, "beambake_vm_tests skipped: ~s~n", [Why]),
    case os:getenv("BEAMBAKE_SKIP_LOG") of
        Log when is_list(Log), Log =/= "" ->
            ok = file:write_file(Log, ["beambake_vm_tests::vm_test_\t", Why, "\n"], [append]);
        _ -> ok
    end.

build(Bin, Root, Recipe, Name) ->
    Out = string:trim(os:cmd("mktemp -d /tmp/beambake-vm-tests.XXXXXX")),
    Cmd = [Bin, " build ", filename:join(Root, Recipe), " --out ", Out,
           " 2>&1; echo \"exit=$?\""],
    Log = os:cmd(lists:flatten(Cmd)),
    ?assertMatch({match, _}, re:run(Log, "exit=0\\s*$"), Log),
    filename:join(Out, Name).

%% evum's session: a switch, three VMs, addresses set, pings, console commands, and
%% between guests a TCP echo and Erlang distribution — every frame an Erlang message.
three_vms_on_one_switch(Dir) ->
    {ok, Sw} = beambake_switch:start(),
    Ips = ["10.0.124.11", "10.0.124.12", "10.0.124.13"],
    Vms = [begin
               {ok, Vm} = beambake_vm:start(Dir, [{switch, Sw}, {node, "echo@" ++ Ip}]),
               Vm
           end || Ip <- Ips],
    [A, B, C] = Vms,
    %% Addresses from Erlang, as evum's ifconfig/2 (requests wait for the guests' init).
    [?assertEqual(ok, beambake_vm:ifconfig(Vm, {Ip, "255.255.255.0", none}))
     || {Vm, Ip} <- lists:zip(Vms, Ips)],
    %% ARP and ICMP through the switch, every pair.
    [?assertMatch({ok, Us} when is_integer(Us), beambake_test_vm:ping_retry(From, To, 5))
     || From <- Vms, {To, Vm} <- lists:zip(Ips, Vms), Vm =/= From],
    ?assertEqual({error, timeout}, beambake_vm:ping(A, "10.0.124.99", 500)),
    Macs = beambake_switch:mac_table(Sw),
    ?assertEqual(3, length(Macs)),
    %% Each console is the release's Erlang shell: its answer comes back as lines.
    [beambake_test_vm:wait_console(Vm, "Echo server started", ?BOOT_MS) || Vm <- Vms],
    ?assertMatch({ok, _}, ask(A, "erlang:system_info(otp_release).", "\"25\"")),
    ?assertMatch({ok, _}, ask(B, "is_list(erlang:memory()).", "true")),
    %% A TCP echo from guest A to the echo server of guest C, across the switch.
    ?assertMatch({ok, _}, ask(A, "begin {ok, S} = gen_tcp:connect({10,0,124,13}, 8080, "
                                 "[binary, {active, false}], 10000), ok = gen_tcp:send(S, "
                                 "<<\"across the switch\\n\">>), gen_tcp:recv(S, 0, 10000) end.",
                              "{ok,<<\"across the switch")),
    %% Erlang distribution between guest nodes B and C, and an rpc through it.
    ?assertMatch({ok, _}, ask(B, "net_adm:ping('echo@10.0.124.13').", "pong")),
    ?assertMatch({ok, _}, ask(B, "rpc:call('echo@10.0.124.13', erlang, node, []).",
                              "'echo@10.0.124.13'")),
    #{unicast := Unicast} = beambake_switch:stats(Sw),
    ?assert(Unicast > 0),
    %% A clean stop: the release stops as on SIGTERM, the guest powers off with its
    %% status, monitors see it.
    Ref = erlang:monitor(process, C),
    ?assertEqual({ok, 0}, beambake_vm:stop(C)),
    receive {'DOWN', Ref, process, C, Why} -> ?assertEqual({guest_exit, 0}, Why)
    after 10000 -> ?assert(false)
    end,
    [beambake_vm:stop(Vm) || Vm <- [A, B]],
    beambake_switch:stop(Sw).

%% A User Mode Linux guest (linux.uml, its NIC on UML's fd transport) and a qemu microvm
%% on one switch: addresses at boot, ICMP both ways, the UML guest's status at stop.
uml_and_microvm_share_a_switch(Uml, Microvm) ->
    {ok, Sw} = beambake_switch:start(),
    {ok, U} = beambake_vm:start(Uml, [{switch, Sw}, {ip, {"10.0.125.2", 24, none}}]),
    {ok, M} = beambake_vm:start(Microvm, [{switch, Sw}, {ip, {"10.0.125.3", 24, none}}]),
    ?assertEqual(uml, proplists:get_value(accel, beambake_vm:info(U))),
    ?assertMatch({ok, _}, beambake_test_vm:ping_retry(U, "10.0.125.3", 60)),
    ?assertMatch({ok, _}, beambake_test_vm:ping_retry(M, "10.0.125.2", 5)),
    %% A packet from the port that is not a term is logged and dropped; the VM runs on.
    Port = element(3, sys:get_state(M)),
    ?assert(is_port(Port)),
    M ! {Port, {data, <<"not a term">>}},
    ?assertMatch({ok, _}, beambake_test_vm:ping_retry(M, "10.0.125.2", 5)),
    ?assertEqual({ok, 0}, beambake_vm:stop(U)),
    %% A VM that has ended: sends and requests say so.
    ?assertEqual({error, not_running}, beambake_vm:send(U, "io:format(\"late\").")),
    ?assertEqual({error, not_running}, beambake_vm:ping(U, "10.0.125.3")),
    ?assertEqual({error, not_running}, beambake_vm:stop(U)),
    beambake_vm:stop(M),
    beambake_switch:stop(Sw).

%% A stop while the BEAM boots (before its signal server exists, when a SIGTERM is
%% dropped): the init tells the release again until it ends, so the guest still powers
%% off with a status of its own instead of being killed at the stop bound.
stop_while_the_release_starts(Dir) ->
    {ok, Vm} = beambake_vm:start(Dir, [{stop_timeout, 60}]),
    ?assertMatch({ok, _}, beambake_test_vm:wait_console(Vm, "starting echo", ?BOOT_MS)),
    {ok, Status} = beambake_vm:stop(Vm, 90000),
    ?assert(is_integer(Status), Status).

%% The owner dies: its VM process dies with it, and so does the hypervisor.
owner_death_kills_the_vm(Dir) ->
    Self = self(),
    Owner = spawn(fun() ->
                          {ok, Vm} = beambake_vm:start(Dir, []),
                          Self ! {vm, Vm, beambake_vm:info(Vm)},
                          receive never -> ok end
                  end),
    {Vm, Info} = receive {vm, V, I} -> {V, I} after ?BOOT_MS -> error(no_vm) end,
    OsPid = proplists:get_value(os_pid, Info),
    ?assert(alive(OsPid)),
    Ref = erlang:monitor(process, Vm),
    exit(Owner, kill),
    receive {'DOWN', Ref, process, Vm, _} -> ok after 10000 -> error(vm_process_alive) end,
    ?assert(gone_within(OsPid, 20000)).

%% A directory that is not a build: the start fails, nothing runs.
bad_image_is_refused(Root) ->
    process_flag(trap_exit, true),
    Missing = filename:join(Root, "no/such/image"),
    ?assertEqual({error, {no_image, Missing}}, beambake_vm:start(Missing, [])),
    ?assertMatch({error, {beambake_port_exit, N}} when N =/= 0,
                 beambake_vm:start(filename:join(Root, "erlang"), [])),
    process_flag(trap_exit, false).

%% Types `Expr' on the VM's shell and waits for a console line holding `Want'.
ask(Vm, Expr, Want) ->
    beambake_vm:subscribe(Vm),
    flush(Vm),
    beambake_vm:send(Vm, Expr),
    beambake_test_vm:wait_console(Vm, Want, 60000).

flush(Vm) ->
    receive {beambake_vm, Vm, _} -> flush(Vm) after 0 -> ok end.

alive(OsPid) -> filelib:is_dir("/proc/" ++ integer_to_list(OsPid)) andalso not zombie(OsPid).

zombie(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        {ok, Stat} -> string:find(Stat, ") Z ") =/= nomatch;
        _ -> true
    end.

gone_within(OsPid, Ms) when Ms =< 0 -> not alive(OsPid);
gone_within(OsPid, Ms) ->
    case alive(OsPid) of
        false -> true;
        true -> timer:sleep(200), gone_within(OsPid, Ms - 200)
    end.
