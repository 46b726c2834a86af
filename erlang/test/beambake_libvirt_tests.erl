%% beambake_libvirt against real libvirt, through the beambake binary named by BEAMBAKE:
%%
%% - test_driver: libvirt's own in-process test hypervisor (`test:///default'), no
%%   daemon: the calls, their values and errors, a connection that fails, a port that
%%   dies under a pending call.
%% - lifecycle: Debian's libvirtd started by the test in fresh PID, mount and network
%%   namespaces (test/private_libvirtd.sh: nothing on the host changes; stopped on every
%%   path, and with the Erlang VM), the echo release built for machine pc, its domain XML
%%   from `beambake libvirt-xml --tap tap0', then define, create, TCP echo through the
%%   tap (a socket opened in the private namespace), suspend (no answer), resume (answers
%%   again), the XML round trip, shutdown (ACPI: the guest powers off cleanly), destroy,
%%   undefine; then beambake_vm with libvirt as its backend beside a local VM on one
%%   switch, its clean stop, and its owner's death (the domain goes too).
%%
%% What a test needs and this machine lacks (root, unshare, libvirtd, qemu, BEAMBAKE) is
%% a loud skip: a line `beambake_libvirt_tests:NAME<TAB>reason' in BEAMBAKE_SKIP_LOG.
-module(beambake_libvirt_tests).
-include_lib("eunit/include/eunit.hrl").

-define(NAME, <<"beambake-libvirt-test">>).
-define(GUEST, {10, 0, 120, 101}).
-define(ECHO_PORT, 8080).
-define(VIR_ERR_NO_DOMAIN, 42).

%% --- skips and helpers ------------------------------------------------------------

skip(Test, Reason) ->
    io:format(user, "~nSKIP beambake_libvirt_tests:~s: ~s~n", [Test, Reason]),
    case os:getenv("BEAMBAKE_SKIP_LOG") of
        false -> ok;
        "" -> ok;
        Log -> ok = file:write_file(Log, io_lib:format("beambake_libvirt_tests:~s\t~s~n",
                                                       [Test, Reason]), [append])
    end.

beambake() ->
    case os:getenv("BEAMBAKE") of
        false -> {skip, "BEAMBAKE is not set (cargo xtask test sets it to the release binary)"};
        "" -> {skip, "BEAMBAKE is empty"};
        B ->
            case filelib:is_regular(B) of
                true -> {ok, B};
                false -> {skip, "BEAMBAKE=" ++ B ++ ": no such file (cargo build --release -p beambake)"}
            end
    end.

%% Runs a program to its end: {ExitStatus, Output}.
run(Prog, Args) ->
    Port = open_port({spawn_executable, Prog},
                     [{args, Args}, exit_status, stderr_to_stdout, binary, use_stdio]),
    collect(Port, []).

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, [D | Acc]);
        {Port, {exit_status, N}} -> {N, iolist_to_binary(lists:reverse(Acc))}
    after 900000 -> error({no_exit, Port})
    end.

has(Bin, Sub) -> binary:match(Bin, Sub) =/= nomatch.

%% --- libvirt's test driver: no daemon -----------------------------------------------

test_driver_test_() ->
    {timeout, 120, fun test_driver/0}.

test_driver() ->
    case beambake() of
        {skip, Why} -> skip("test_driver", Why);
        {ok, B} ->
            {ok, C} = beambake_libvirt:connect("test:///default", [{binary, B}]),
            {ok, [{1, <<"test">>}]} = beambake_libvirt:list_domains(C),
            {ok, #{name := <<"test">>, id := 1, active := true, uuid := Uuid}} =
                beambake_libvirt:lookup_by_name(C, "test"),
            ?assertEqual(36, byte_size(Uuid)),
            {ok, #{name := <<"test">>}} = beambake_libvirt:lookup_by_id(C, 1),
            {ok, #{state := running, vcpus := V, max_mem_kib := Max}} =
                beambake_libvirt:get_info(C, <<"test">>),
            ?assert(V >= 1 andalso Max > 0),
            {ok, <<"test">>} = beambake_libvirt:suspend(C, "test"),
            {ok, #{state := paused}} = beambake_libvirt:get_info(C, "test"),
            {ok, <<"test">>} = beambake_libvirt:resume(C, "test"),
            {ok, #{state := running}} = beambake_libvirt:get_info(C, "test"),
            {ok, Xml} = beambake_libvirt:get_xml_desc(C, "test"),
            ?assert(has(Xml, <<"<name>test</name>">>)),
            %% libvirt's errors come back with its code and message.
            {error, {?VIR_ERR_NO_DOMAIN, Msg}} = beambake_libvirt:get_info(C, "no-such-vm"),
            ?assert(is_binary(Msg)),
            {error, {8, _}} = beambake_libvirt:lookup_by_id(C, -1),
            {error, {_, _}} = beambake_libvirt:define_xml(C, <<"<domain>broken">>),
            %% A port that dies under a pending call: the caller hears of it.
            {ok, OsPid} = beambake_libvirt:port_os_pid(C),
            Ref = erlang:monitor(process, C),
            os:cmd("kill -STOP " ++ integer_to_list(OsPid)),
            Self = self(),
            spawn(fun() -> Self ! {pending, beambake_libvirt:list_domains(C, 30000)} end),
            timer:sleep(200),
            os:cmd("kill -KILL " ++ integer_to_list(OsPid)),
            receive {pending, R} -> ?assertEqual({error, {port_exit, 137}}, R)
            after 30000 -> error(no_reply_from_a_dead_port)
            end,
            receive {'DOWN', Ref, process, C, _} -> ok after 5000 -> error(server_alive) end,
            ?assertEqual({error, closed}, beambake_libvirt:list_domains(C)),
            %% A connection that cannot be made says why, with libvirt's code.
            %% (a socket that is not there: no daemon of the host's is asked)
            {error, {Code, Why}} = beambake_libvirt:connect(
                                     "qemu+unix:///system?socket=/nonexistent/beambake/sock",
                                     [{binary, B}]),
            ?assertEqual(38, Code),   % VIR_ERR_SYSTEM_ERROR
            ?assert(has(Why, <<"/nonexistent/beambake/sock">>), Why),
            {error, {cannot_start, "/nonexistent/beambake", _}} =
                beambake_libvirt:connect("test:///default", [{binary, "/nonexistent/beambake"}]),
            %% BEAMBAKE names the binary first; a wrong one is named.
            Saved = os:getenv("BEAMBAKE"),
            os:putenv("BEAMBAKE", "/nonexistent/beambake"),
            try
                {error, {no_beambake, "BEAMBAKE=/nonexistent/beambake: no such file"}} =
                    beambake_libvirt:connect("test:///default")
            after
                os:putenv("BEAMBAKE", Saved)
            end,
            {ok, C2} = beambake_libvirt:connect(<<"test:///default">>),
            ok = beambake_libvirt:close(C2),
            ok
    end.

%% --- the echo image under a private libvirtd ---------------------------------------------

lifecycle_test_() ->
    {timeout, 1200, fun lifecycle/0}.

lifecycle() ->
    Needs = [{"root", fun() -> string:trim(os:cmd("id -u")) =:= "0" end,
              "needs root (namespaces, a tap, libvirtd)"},
             {"unshare", fun() -> os:find_executable("unshare") =/= false end,
              "unshare not found (util-linux)"},
             {"ip", fun() -> os:find_executable("ip") =/= false end,
              "ip not found (iproute2)"},
             {"libvirtd", fun() -> filelib:is_regular("/usr/sbin/libvirtd") end,
              "/usr/sbin/libvirtd not found: apt-get install libvirt-daemon-system"},
             {"qemu", fun() -> os:find_executable("qemu-system-x86_64") =/= false end,
              "qemu-system-x86_64 not found: apt-get install qemu-system-x86"}],
    Missing = [Why || {_, Check, Why} <- Needs, not Check()],
    case {beambake(), Missing, os:getenv("BEAMBAKE_ROOT")} of
        {{skip, Why}, _, _} -> skip("lifecycle", Why);
        {_, [Why | _], _} -> skip("lifecycle", Why);
        {_, _, false} -> skip("lifecycle", "BEAMBAKE_ROOT is not set (the checkout: recipes, examples)");
        {{ok, B}, [], Root} -> lifecycle(B, Root)
    end.

lifecycle(B, Root) ->
    Tmp = string:trim(os:cmd("mktemp -d /tmp/beambake-libvirt-test.XXXXXX")),
    Dir = build_pc_image(B, Root, Tmp),
    Xml = filename:join(Tmp, "echo.xml"),
    Console = filename:join(Tmp, "console.log"),
    {0, _} = run(B, ["libvirt-xml", Dir, "--tap", "tap0", "--console", Console,
                     "--name", binary_to_list(?NAME), "-o", Xml]),
    {Daemon, NsPid} = start_daemon(Tmp),
    try
        drive(Tmp, Xml, Console, Dir, NsPid),
        vm_backend(Tmp, Dir),
        os:cmd("rm -rf " ++ Tmp)
    after
        stop_daemon(Daemon, NsPid)
    end.

%% The echo recipe, built for machine pc (libvirt runs images as pc: its NIC needs
%% virtio_pci, which only a pc build carries).
build_pc_image(B, Root, Tmp) ->
    {ok, Text} = file:read_file(filename:join(Root, "recipes/echo-microvm.toml")),
    Examples = list_to_binary(filename:join(Root, "examples/echo")),
    T1 = binary:replace(Text, <<"machine = \"microvm\"">>, <<"machine = \"pc\"">>),
    T2 = binary:replace(T1, <<"\"../examples/echo\"">>, <<$", Examples/binary, $">>),
    ?assert(has(T2, <<"machine = \"pc\"">>) andalso has(T2, Examples)),
    Recipe = filename:join(Tmp, "echo-pc.toml"),
    ok = file:write_file(Recipe, T2),
    Out = filename:join(Tmp, "out"),
    case run(B, ["build", Recipe, "--out", Out]) of
        {0, _} -> filename:join(Out, "echo-microvm");
        {N, Output} -> error({build_failed, N, Output})
    end.

start_daemon(Tmp) ->
    Script = filename:join(filename:dirname(?FILE), "private_libvirtd.sh"),
    Port = open_port({spawn_executable, os:find_executable("unshare")},
                     [{args, ["--mount", "--net", "--pid", "--fork", "--kill-child",
                              "--mount-proc", "--propagation", "private",
                              "bash", Script, Tmp]},
                      {line, 4096}, exit_status, stderr_to_stdout, use_stdio, binary]),
    {os_pid, NsPid} = erlang:port_info(Port, os_pid),
    wait_ready(Port, NsPid, []).

wait_ready(Port, NsPid, Lines) ->
    receive
        {Port, {data, {eol, <<"private_libvirtd: ready">>}}} -> {Port, NsPid};
        {Port, {data, {_, L}}} -> wait_ready(Port, NsPid, [L | Lines]);
        {Port, {exit_status, N}} ->
            error({private_libvirtd_failed, N, lists:reverse(Lines)})
    after 120000 ->
        stop_daemon(Port, NsPid),
        error({private_libvirtd_not_ready, lists:reverse(Lines)})
    end.

%% Closing the port closes the script's input: it stops libvirtd and exits, and the
%% PID namespace (every qemu in it) ends with it. If it does not go, unshare is killed
%% (--kill-child takes the namespace's init with it).
stop_daemon(Port, NsPid) ->
    catch port_close(Port),
    wait_gone(NsPid, 100),
    os:cmd("kill -KILL " ++ integer_to_list(NsPid) ++ " 2>/dev/null"),
    ok.

wait_gone(_, 0) -> ok;
wait_gone(Pid, N) ->
    case filelib:is_dir("/proc/" ++ integer_to_list(Pid)) of
        false -> ok;
        true -> timer:sleep(100), wait_gone(Pid, N - 1)
    end.

uri(Tmp) -> "qemu+unix:///system?socket=" ++ filename:join(Tmp, "sock/libvirt-sock").

drive(Tmp, XmlFile, Console, Dir, NsPid) ->
    Uri = uri(Tmp),
    NetNs = "/proc/" ++ integer_to_list(NsPid) ++ "/ns/net",
    {ok, C} = beambake_libvirt:connect(Uri),
    try
        {ok, []} = beambake_libvirt:list_domains(C),
        {ok, Xml} = file:read_file(XmlFile),
        {ok, #{name := ?NAME, active := false}} = beambake_libvirt:define_xml(C, Xml),
        {ok, [{undefined, ?NAME}]} = beambake_libvirt:list_domains(C),
        {error, {?VIR_ERR_NO_DOMAIN, _}} = beambake_libvirt:create(C, "no-such-vm"),
        {ok, #{active := true, id := Id}} = beambake_libvirt:create(C, ?NAME, 120000),
        {ok, #{name := ?NAME}} = beambake_libvirt:lookup_by_id(C, Id),
        {ok, [{Id, ?NAME}]} = beambake_libvirt:list_domains(C),
        {ok, #{state := running, vcpus := 1, max_mem_kib := 262144}} =
            beambake_libvirt:get_info(C, ?NAME),
        %% The release answers through the tap in the private namespace.
        ok = wait_echo(NetNs, <<"hello libvirt\n">>, 180),
        {ok, Log} = file:read_file(Console),
        ?assert(has(Log, <<"Echo server started">>)),
        %% Paused: no answer within 5 s (a fresh connection gets no SYN-ACK).
        {ok, ?NAME} = beambake_libvirt:suspend(C, ?NAME),
        {ok, #{state := paused}} = beambake_libvirt:get_info(C, ?NAME),
        ?assertMatch({error, _}, echo(NetNs, <<"while paused\n">>, 5000)),
        {ok, #{state := paused}} = beambake_libvirt:get_info(C, ?NAME),
        %% Resumed: it answers again.
        {ok, ?NAME} = beambake_libvirt:resume(C, ?NAME),
        {ok, #{state := running}} = beambake_libvirt:get_info(C, ?NAME),
        ok = wait_echo(NetNs, <<"resumed\n">>, 60),
        %% What libvirt kept of the XML.
        {ok, Desc} = beambake_libvirt:get_xml_desc(C, ?NAME),
        Kernel = list_to_binary(filename:join(Dir, "vmlinuz")),
        [?assert(has(Desc, Want), Want) ||
            Want <- [<<"<name>", ?NAME/binary, "</name>">>,
                     <<"<memory unit='KiB'>262144</memory>">>,
                     <<"<vcpu placement='static'>1</vcpu>">>,
                     <<"<kernel>", Kernel/binary, "</kernel>">>,
                     <<"beambake.ip=10.0.120.101/24">>,
                     <<"beambake.node=echo@10.0.120.101">>,
                     <<"machine='pc">>,
                     <<"<target dev='tap0' managed='no'/>">>,
                     <<"isa-debug-exit">>]],
        %% A clean shutdown: ACPI's power button, the init stops the release and powers
        %% off with its status.
        {ok, ?NAME} = beambake_libvirt:shutdown(C, ?NAME),
        ?assertEqual(shutoff, wait_state(C, ?NAME, shutoff, 120)),
        {ok, Log2} = file:read_file(Console),
        [?assert(has(Log2, Want), Want) || Want <- [<<"power button: stopping">>,
                                                    <<"power off, status 0">>]],
        %% Destroy: started again, ended at once.
        {ok, #{active := true}} = beambake_libvirt:create(C, ?NAME, 120000),
        {ok, ?NAME} = beambake_libvirt:destroy(C, ?NAME),
        {ok, #{state := shutoff}} = beambake_libvirt:get_info(C, ?NAME),
        {ok, ?NAME} = beambake_libvirt:undefine(C, ?NAME),
        {error, {?VIR_ERR_NO_DOMAIN, _}} = beambake_libvirt:lookup_by_name(C, ?NAME),
        {ok, []} = beambake_libvirt:list_domains(C)
    after
        beambake_libvirt:close(C)
    end.

%% beambake_vm with libvirt as its backend: a transient domain of the private daemon
%% (its console, control line and NIC on Unix sockets) and a local qemu VM of the same
%% image on one beambake_switch; a clean stop, and an owner that dies.
vm_backend(Tmp, Dir) ->
    Uri = uri(Tmp),
    {ok, C} = beambake_libvirt:connect(Uri),
    {ok, Sw} = beambake_switch:start(),
    try
        %% A daemon that is not there: the start fails, nothing runs.
        ?assertMatch({error, {beambake_port_exit, N}} when N =/= 0,
                     beambake_vm:start(Dir, [{libvirt, "qemu+unix:///system?socket="
                                                        "/nonexistent/beambake/sock"}])),
        {ok, L} = beambake_vm:start(Dir, [{libvirt, Uri}, {switch, Sw},
                                          {ip, {"10.0.126.2", 24, none}}]),
        Info = beambake_vm:info(L),
        ?assertEqual(libvirt, proplists:get_value(backend, Info)),
        Dom = proplists:get_value(domain, Info),
        {ok, [{Id, Dom}]} = beambake_libvirt:list_domains(C),
        ?assert(is_integer(Id)),
        {ok, Desc} = beambake_libvirt:get_xml_desc(C, Dom),
        [?assert(has(Desc, Want), Want) || Want <- [<<"<serial type='unix'>">>,
                                                    <<"beambake.ctl=ttyS1">>,
                                                    <<"dgram,id=bbnet0">>]],
        {ok, Q} = beambake_vm:start(Dir, [{switch, Sw}, {ip, {"10.0.126.3", 24, none}}]),
        %% ARP and ICMP between the domain and the local VM, through the switch.
        ?assertMatch({ok, _}, beambake_test_vm:ping_retry(L, "10.0.126.3", 120)),
        ?assertMatch({ok, _}, beambake_test_vm:ping_retry(Q, "10.0.126.2", 10)),
        %% The domain's console comes as messages.
        ?assertMatch({ok, _}, beambake_test_vm:wait_console(L, <<"Echo server started">>, 180000)),
        Ref = erlang:monitor(process, L),
        ?assertEqual({ok, 0}, beambake_vm:stop(L)),
        receive {'DOWN', Ref, process, L, Why} -> ?assertEqual({guest_exit, 0}, Why)
        after 10000 -> error(vm_process_alive)
        end,
        %% Transient: gone with its VM.
        ?assertEqual({ok, []}, beambake_libvirt:list_domains(C)),
        ?assertEqual({ok, 0}, beambake_vm:stop(Q)),
        %% The owner dies: libvirt destroys the domain (the port's stdin closed, and the
        %% domain was started to end with the port's connection).
        Self = self(),
        Owner = spawn(fun() ->
                              {ok, V} = beambake_vm:start(Dir, [{libvirt, Uri}]),
                              Self ! {vm, V},
                              receive never -> ok end
                      end),
        receive {vm, _} -> ok after 180000 -> error(no_vm) end,
        {ok, [_]} = beambake_libvirt:list_domains(C),
        exit(Owner, kill),
        ?assertEqual(ok, wait_no_domains(C, 60))
    after
        beambake_switch:stop(Sw),
        beambake_libvirt:close(C)
    end.

wait_state(C, Name, _Want, 0) ->
    {ok, #{state := State}} = beambake_libvirt:get_info(C, Name),
    State;
wait_state(C, Name, Want, N) ->
    case beambake_libvirt:get_info(C, Name) of
        {ok, #{state := Want}} -> Want;
        _ -> timer:sleep(1000), wait_state(C, Name, Want, N - 1)
    end.

wait_no_domains(C, 0) -> beambake_libvirt:list_domains(C);
wait_no_domains(C, N) ->
    case beambake_libvirt:list_domains(C) of
        {ok, []} -> ok;
        _ -> timer:sleep(1000), wait_no_domains(C, N - 1)
    end.

%% One echo exchange with the guest from inside the private network namespace.
echo(NetNs, Msg, Timeout) ->
    case gen_tcp:connect(?GUEST, ?ECHO_PORT,
                         [binary, {active, false}, {packet, raw}, {netns, NetNs}], Timeout) of
        {ok, S} ->
            ok = gen_tcp:send(S, Msg),
            R = gen_tcp:recv(S, byte_size(Msg), Timeout),
            gen_tcp:close(S),
            case R of
                {ok, Msg} -> ok;
                {ok, Other} -> {error, {echoed, Other}};
                E -> E
            end;
        E -> E
    end.

wait_echo(NetNs, Msg, Seconds) ->
    Deadline = erlang:monotonic_time(second) + Seconds,
    wait_echo(NetNs, Msg, Deadline, none).

wait_echo(NetNs, Msg, Deadline, Last) ->
    case erlang:monotonic_time(second) > Deadline of
        true -> {error, {no_echo, Last}};
        false ->
            case echo(NetNs, Msg, 3000) of
                ok -> ok;
                E -> timer:sleep(1000), wait_echo(NetNs, Msg, Deadline, E)
            end
    end.
