%% @doc One VM as one Erlang process (evum's `evum'): a Linux guest built by beambake
%% (a microvm or uml image directory, or a recipe, built first) runs under
%% `beambake port', and every I/O of the guest with the outside world is a message.
%%
%% <ul>
%% <li>Console: each console line goes to the owner and to subscribers as
%%     `{beambake_vm, Vm, {console, Line}}'; {@link send/2} types a line. When the recipe
%%     sets `[launch] shell = true' the console is the release's Erlang shell, so
%%     `send(Vm, "erlang:memory().")' is answered on the console.</li>
%% <li>Network: with `{switch, Sw}' the VM's NIC is a port of a {@link beambake_switch}:
%%     its frames travel as Erlang messages, nothing touches the host's network.
%%     {@link ifconfig/2} and {@link ping/2} ask the guest's init (its control line).</li>
%% <li>Life: `start/2' links the VM to its owner (the owner's death kills the guest; no
%%     hypervisor outlives `beambake port', which dies with its stdin); {@link stop/1}
%%     asks for a clean power-off, then kills after a bound. When the guest ends the
%%     process exits with `{guest_exit, Status}' (Status: the guest's own exit code, or
%%     `{signal, N}' / `{vmm, Code}'), after unlinking from its owner, so monitors see it
%%     and the owner does not die of it.</li>
%% </ul>
%%
%% Owns: the port and the request ids of the control line. Must not: switch frames (the
%% switch does), or know how a VM is booted (`beambake port' does).
-module(beambake_vm).
-behaviour(gen_server).

-export([start/2, stop/1, stop/2, send/2, subscribe/1, unsubscribe/1]).
-export([ifconfig/2, ping/2, ping/3, info/1, beambake_binary/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(CTL_TIMEOUT, 120000).  % requests wait for the guest to boot

-record(state, {
    owner :: pid(),
    port :: port() | undefined,
    switch :: pid() | undefined,
    subs = #{} :: #{pid() => reference()},
    next_id = 1 :: pos_integer(),
    pending = #{} :: #{pos_integer() => {gen_server:from(), atom()}},
    stoppers = [] :: [gen_server:from()],
    info = [] :: [{atom(), term()}],
    partial = <<>> :: binary()
}).

%% @doc Starts a VM of the image directory or recipe `Image', linked to the caller.
%% `Opts' (a proplist or map):
%% `{switch, Sw}' (attach the NIC to a beambake_switch),
%% `{ip, {Ip, Mask, Gw}}' (the address at boot; strings or tuples; Gw may be `none'),
%% `{mac, "52:54:00:..."}', `{node, "name@host"}', `{accel, tcg | kvm | auto}',
%% `{stop_timeout, Seconds}', `{subscribers, [Pid]}', `{binary, Path}' (the beambake
%% program; else `$BEAMBAKE', else `beambake' on `PATH'), `{start_timeout, Ms}' (for a
%% recipe that is built first; default 600000), `{libvirt, Uri}' (the VM runs as a
%% transient domain of the libvirt daemon at `Uri' on this host, e.g. `"qemu:///system"',
%% instead of a qemu of its own: an image built with `vm.machine = "pc"'; everything
%% else is the same, and the domain goes with the VM process).
%%
%% Errors: `{no_image, Path}' (no such file or directory), `{beambake_port_exit, N}'
%% (beambake refused the image or could not start the VM: its reason is on stderr),
%% `{beambake_port, Msg}'.
-spec start(file:filename_all(), list() | map()) -> {ok, pid()} | {error, term()}.
start(Image, Opts) when is_map(Opts) ->
    start(Image, maps:to_list(Opts));
start(Image, Opts) ->
    case filelib:is_dir(Image) orelse filelib:is_regular(Image) of
        false ->
            {error, {no_image, Image}};
        true ->
            Timeout = proplists:get_value(start_timeout, Opts, 600000),
            %% Linked only once the VM runs (from its init): a start that fails returns
            %% its reason without an exit signal to the caller.
            gen_server:start(?MODULE, {self(), Image, Opts}, [{timeout, Timeout}])
    end.

%% @doc Asks the guest to power off cleanly (its init stops the release as on SIGTERM);
%% kills it after the stop bound. Returns the guest's status.
stop(Vm) -> stop(Vm, 60000).
stop(Vm, Timeout) ->
    Ref = erlang:monitor(process, Vm),
    try gen_server:call(Vm, stop, Timeout) of
        {ok, Status} ->
            receive {'DOWN', Ref, process, Vm, _} -> ok after Timeout -> ok end,
            {ok, Status}
    catch
        exit:{{guest_exit, Status}, _} -> {ok, Status};
        exit:{noproc, _} -> {error, not_running}
    after
        erlang:demonitor(Ref, [flush])
    end.

%% @doc Types `Line' (and a newline) on the guest's console; `{error, not_running}'
%% once the VM has ended.
-spec send(pid(), iodata()) -> ok | {error, not_running}.
send(Vm, Line) -> call(Vm, {send, Line}, 10000).

subscribe(Vm) -> gen_server:call(Vm, {subscribe, self()}).
unsubscribe(Vm) -> gen_server:call(Vm, {unsubscribe, self()}).

%% @doc Sets the guest NIC's address, netmask and default gateway (`none': no route),
%% as evum's `ifconfig/2': `{"192.168.213.92", "255.255.255.0", "192.168.213.1"}'.
-spec ifconfig(pid(), {term(), term(), term()}) -> ok | {error, term()}.
ifconfig(Vm, {Ip, Mask, Gw}) ->
    case {addr(Ip), prefix(Mask), gateway(Gw)} of
        {{ok, A}, {ok, P}, {ok, G}} ->
            Line = ["ifconfig ", A, "/", integer_to_list(P) | [[" ", G] || G =/= none]],
            case ctl(Vm, Line) of
                {ok, _} -> ok;
                Error -> Error
            end;
        Bad ->
            {error, {badarg, Bad}}
    end.

%% @doc One ICMP echo from the guest: `{ok, Microseconds}' or `{error, timeout}'.
ping(Vm, Ip) -> ping(Vm, Ip, 1000).
ping(Vm, Ip, TimeoutMs) ->
    case addr(Ip) of
        {ok, A} ->
            case ctl(Vm, ["ping ", A, " ", integer_to_list(TimeoutMs)]) of
                {ok, Text} ->
                    [_, Us] = string:split(Text, " "),
                    {ok, binary_to_integer(Us)};
                Error ->
                    Error
            end;
        Error ->
            Error
    end.

%% @doc What `beambake port' reported at start: `os_pid', `mac', `accel'.
info(Vm) -> gen_server:call(Vm, info).

%% @doc The beambake program: `$BEAMBAKE', else the application's `binary' setting,
%% else `beambake' on `PATH'.
beambake_binary() ->
    case os:getenv("BEAMBAKE") of
        Path when is_list(Path), Path =/= "" -> {ok, Path};
        _ ->
            case application:get_env(beambake, binary) of
                {ok, Path} -> {ok, Path};
                undefined ->
                    case os:find_executable("beambake") of
                        false -> {error, {beambake_not_found,
                                          "set BEAMBAKE, the beambake application's `binary', "
                                          "or put beambake on PATH"}};
                        Path -> {ok, Path}
                    end
            end
    end.

ctl(Vm, Line) -> call(Vm, {ctl, Line}, ?CTL_TIMEOUT + 5000).

%% A call to a VM that may have ended (or ends meanwhile): `{error, not_running}' then.
call(Vm, Req, Timeout) ->
    try
        gen_server:call(Vm, Req, Timeout)
    catch
        exit:{noproc, _} -> {error, not_running};
        exit:{{guest_exit, _}, _} -> {error, not_running};
        exit:{{shutdown, _}, _} -> {error, not_running};
        exit:{normal, _} -> {error, not_running}
    end.

%% gen_server

init({Owner, Image, Opts}) ->
    process_flag(trap_exit, true),
    Bin = case proplists:get_value(binary, Opts) of
              undefined -> beambake_binary();
              B -> {ok, B}
          end,
    case Bin of
        {ok, Exe} ->
            Port = open_port({spawn_executable, Exe},
                             [{args, ["port", to_list(Image) | port_args(Opts)]},
                              {packet, 4}, binary, exit_status, use_stdio]),
            await_start(#state{owner = Owner, port = Port,
                               switch = proplists:get_value(switch, Opts)}, Opts);
        {error, Why} ->
            start_failed(Why)
    end.

await_start(S = #state{port = Port}, Opts) ->
    receive
        {Port, {data, Data}} ->
            case decode(Data) of
                {ok, {started, Info}} ->
                    %% An owner already gone comes back as {'EXIT', Owner, noproc}.
                    link(S#state.owner),
                    [beambake_switch:attach(S#state.switch) || S#state.switch =/= undefined],
                    Subs = maps:from_list([{P, erlang:monitor(process, P)}
                                           || P <- proplists:get_value(subscribers, Opts, [])]),
                    {ok, S#state{info = Info, subs = Subs}};
                {ok, {error, Msg}} ->
                    start_failed({beambake_port, Msg});
                _Other ->
                    await_start(S, Opts)
            end;
        {Port, {exit_status, N}} ->
            start_failed({beambake_port_exit, N});
        {'EXIT', Port, Why} ->
            start_failed({beambake_port, Why})
    end.

handle_call(stop, From, S = #state{port = Port, stoppers = St}) ->
    port_command(Port, term_to_binary(stop)),
    {noreply, S#state{stoppers = [From | St]}};
handle_call({ctl, Line}, From, S = #state{port = Port, next_id = Id, pending = P}) ->
    Req = iolist_to_binary([integer_to_list(Id), " ", Line]),
    port_command(Port, term_to_binary({ctl, Req})),
    erlang:send_after(?CTL_TIMEOUT, self(), {ctl_timeout, Id}),
    {noreply, S#state{next_id = Id + 1, pending = P#{Id => From}}};
handle_call({subscribe, Pid}, _From, S = #state{subs = Subs}) ->
    case maps:is_key(Pid, Subs) of
        true -> {reply, ok, S};
        false -> {reply, ok, S#state{subs = Subs#{Pid => erlang:monitor(process, Pid)}}}
    end;
handle_call({unsubscribe, Pid}, _From, S = #state{subs = Subs}) ->
    case maps:take(Pid, Subs) of
        {Ref, Rest} -> erlang:demonitor(Ref, [flush]), {reply, ok, S#state{subs = Rest}};
        error -> {reply, ok, S}
    end;
handle_call(info, _From, S = #state{info = Info}) ->
    {reply, Info, S};
handle_call({send, Line}, _From, S = #state{port = Port}) ->
    port_command(Port, term_to_binary({console, iolist_to_binary([Line, "\n"])})),
    {reply, ok, S}.

handle_cast(_Msg, S) ->
    {noreply, S}.

handle_info({Port, {data, Data}}, S = #state{port = Port}) ->
    case decode(Data) of
        {ok, {exit, Status}} -> guest_exit(Status, S);   % sent last: the port closes next
        {ok, Term} -> {noreply, from_port(Term, S)};
        error ->
            %% Not a term: logged and dropped; the VM runs on.
            logger:warning("beambake_vm ~p: a malformed packet from beambake port "
                           "dropped (~b bytes: ~P)", [self(), byte_size(Data), Data, 20]),
            {noreply, S}
    end;
handle_info({beambake_switch, Sw, {frame, Frame}}, S = #state{switch = Sw, port = Port}) ->
    port_command(Port, term_to_binary({frame, Frame})),
    {noreply, S};
handle_info({Port, {exit_status, N}}, S = #state{port = Port}) ->
    %% The port ended without reporting the guest's status (it sends {exit, _} first).
    guest_exit({port_exit, N}, S#state{port = undefined});
handle_info({ctl_timeout, Id}, S = #state{pending = P}) ->
    case maps:take(Id, P) of
        {From, Rest} ->
            gen_server:reply(From, {error, timeout}),
            {noreply, S#state{pending = Rest}};
        error ->
            {noreply, S}
    end;
handle_info({'DOWN', _, process, Pid, _}, S = #state{subs = Subs}) ->
    {noreply, S#state{subs = maps:remove(Pid, Subs)}};
handle_info({'EXIT', Owner, Why}, S = #state{owner = Owner}) ->
    %% The owner is gone: so is its VM (closing the port kills it).
    {stop, {shutdown, {owner_exit, Why}}, S};
handle_info({'EXIT', _Port, _}, S) ->
    {noreply, S};
handle_info(_Other, S) ->
    {noreply, S}.

terminate(_Why, #state{port = Port}) when is_port(Port) ->
    catch port_close(Port),
    ok;
terminate(_Why, _S) ->
    ok.

%% A start that fails is the caller's news, not a crash: start/2 returns the reason and
%% this process ends normally (OTP 25's gen_server has no init result for that, and
%% `{stop, _}' would log a crash report).
start_failed(Why) ->
    proc_lib:init_ack({error, Why}),
    exit(normal).

decode(Data) ->
    try {ok, binary_to_term(Data)}
    catch error:badarg -> error
    end.

%% Terms from `beambake port'.
from_port({console, Line}, S) ->
    notify({console, Line}, S),
    S;
from_port({frame, Frame}, S = #state{switch = Sw}) when is_pid(Sw) ->
    beambake_switch:send(Sw, Frame),
    S;
from_port({frame, _Frame}, S) ->
    S;
from_port({ctl, Line}, S = #state{pending = P}) ->
    case string:split(Line, " ", leading) of
        [IdBin, Rest] ->
            Id = binary_to_integer(IdBin),
            case maps:take(Id, P) of
                {From, P1} ->
                    gen_server:reply(From, ctl_reply(Rest)),
                    S#state{pending = P1};
                error ->
                    S
            end;
        _ ->
            S
    end;
from_port({error, Msg}, S) ->
    notify({error, Msg}, S),
    S;
from_port(_Other, S) ->
    S.

ctl_reply(<<"ok">>) -> {ok, <<>>};
ctl_reply(<<"ok ", Text/binary>>) -> {ok, Text};
ctl_reply(<<"error ", Text/binary>>) -> {error, binary_to_atom_if_known(Text)};
ctl_reply(Other) -> {error, Other}.

binary_to_atom_if_known(<<"timeout">>) -> timeout;
binary_to_atom_if_known(Text) -> Text.

notify(Msg, #state{owner = Owner, subs = Subs}) ->
    [P ! {beambake_vm, self(), Msg} || P <- lists:usort([Owner | maps:keys(Subs)])],
    ok.

guest_exit(Status, S = #state{owner = Owner, stoppers = St, pending = P}) ->
    [gen_server:reply(F, {ok, Status}) || F <- St],
    [gen_server:reply(F, {error, {guest_exit, Status}}) || F <- maps:values(P)],
    unlink(Owner),
    %% Ends with exactly this reason for monitors, without a crash report: a guest that
    %% ended is news, not a fault of this process.
    terminate(guest_exit, S),
    process_flag(trap_exit, false),
    exit(self(), {guest_exit, Status}),
    {noreply, S#state{port = undefined}}.

port_args(Opts) ->
    lists:append([port_arg(O) || O <- Opts]).

port_arg({ip, {Ip, Mask, Gw}}) ->
    {ok, A} = addr(Ip),
    {ok, P} = prefix(Mask),
    ["--ip", A ++ "/" ++ integer_to_list(P)]
        ++ case gateway(Gw) of {ok, none} -> []; {ok, G} -> ["--gw", G] end;
port_arg({mac, Mac}) -> ["--mac", to_list(Mac)];
port_arg({node, Node}) -> ["--node", to_list(Node)];
port_arg({accel, A}) -> ["--accel", to_list(A)];
port_arg({stop_timeout, Secs}) -> ["--stop-timeout", integer_to_list(Secs)];
port_arg({libvirt, Uri}) -> ["--libvirt", to_list(Uri)];
port_arg(_) -> [].

addr(T) when is_tuple(T), tuple_size(T) =:= 4 ->
    {ok, inet:ntoa(T)};
addr(S) when is_list(S); is_binary(S); is_atom(S) ->
    case inet:parse_ipv4strict_address(to_list(S)) of
        {ok, T} -> {ok, inet:ntoa(T)};
        {error, _} -> {error, {bad_address, S}}
    end;
addr(Other) -> {error, {bad_address, Other}}.

gateway(none) -> {ok, none};
gateway(G) -> addr(G).

%% A netmask (`"255.255.255.0"' or a tuple) or a prefix length.
prefix(P) when is_integer(P), P >= 0, P =< 32 -> {ok, P};
prefix(M) ->
    case addr(M) of
        {ok, S} ->
            {ok, {A, B, C, D}} = inet:parse_ipv4strict_address(S),
            <<Bits:32>> = <<A, B, C, D>>,
            Ones = length([1 || I <- lists:seq(0, 31), Bits band (1 bsl (31 - I)) =/= 0]),
            case (Bits bsl Ones) band 16#ffffffff of
                0 -> {ok, Ones};
                _ -> {error, {bad_netmask, M}}
            end;
        _ ->
            {error, {bad_netmask, M}}
    end.

to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(L) when is_list(L) -> L.
