%% @doc A learning Ethernet switch as an Erlang process (evum's `evum_switch').
%%
%% Ports are processes: a port attaches with {@link attach/1} and then sends the frames
%% its VM (or anything else) puts on the wire with {@link send/2}; frames for it arrive as
%% `{beambake_switch, Switch, {frame, Frame}}'. The switch learns which port each source
%% MAC address is behind, forwards a unicast frame to that port only, floods broadcast,
%% multicast and unknown destinations to every other port, and forgets an address that
%% was not seen as a source for the aging time (default 300 s). A port that exits is
%% detached and its addresses forgotten.
%%
%% Any process can watch the wire: {@link subscribe/1} sends it a copy of every frame
%% (`{beambake_switch, Switch, {seen, FromPort, Frame}}'), and {@link inject/2} puts a
%% frame on the wire as if from no port (forwarded, never learned).
%%
%% Owns: the MAC table and forwarding. Must not: know about VMs, IP or what a frame
%% carries beyond its two addresses.
-module(beambake_switch).
-behaviour(gen_server).

-export([start/0, start/1, start_link/0, start_link/1, stop/1]).
-export([attach/1, detach/1, send/2, inject/2, subscribe/1, unsubscribe/1]).
-export([mac_table/1, stats/1, set_aging/2]).
-export([format_mac/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(DEFAULT_AGING_MS, 300000).
-define(MIN_FRAME, 14).

-type mac() :: <<_:48>>.
-type frame() :: binary().
-export_type([mac/0, frame/0]).

-record(state, {
    ports = #{} :: #{pid() => reference()},
    subs = #{} :: #{pid() => reference()},
    %% MAC -> {Port, LastSeenMs}
    macs = #{} :: #{mac() => {pid(), integer()}},
    aging_ms = ?DEFAULT_AGING_MS :: pos_integer(),
    stats = #{frames => 0, bytes => 0, flooded => 0, unicast => 0,
              dropped => 0, injected => 0} :: map()
}).

%% @doc A switch not linked to the caller; `Opts': `#{aging_ms => Ms}'.
start() -> start(#{}).
start(Opts) -> gen_server:start(?MODULE, Opts, []).
start_link() -> start_link(#{}).
start_link(Opts) -> gen_server:start_link(?MODULE, Opts, []).

stop(Sw) -> gen_server:stop(Sw).

%% @doc Attaches the calling process as a port.
-spec attach(pid()) -> ok.
attach(Sw) -> gen_server:call(Sw, {attach, self()}).

-spec detach(pid()) -> ok.
detach(Sw) -> gen_server:call(Sw, {detach, self()}).

%% @doc Puts `Frame' on the wire from the calling port (asynchronous: a switch never
%% blocks its ports). Frames from a process that is not attached are dropped.
-spec send(pid(), frame()) -> ok.
send(Sw, Frame) when is_binary(Frame) -> gen_server:cast(Sw, {frame, self(), Frame}).

%% @doc Puts `Frame' on the wire from no port: forwarded, its source never learned.
-spec inject(pid(), frame()) -> ok.
inject(Sw, Frame) when is_binary(Frame) -> gen_server:cast(Sw, {inject, Frame}).

-spec subscribe(pid()) -> ok.
subscribe(Sw) -> gen_server:call(Sw, {subscribe, self()}).

-spec unsubscribe(pid()) -> ok.
unsubscribe(Sw) -> gen_server:call(Sw, {unsubscribe, self()}).

%% @doc The addresses the switch knows now: `[{Mac, Port, AgeMs}]', sorted by MAC.
mac_table(Sw) -> gen_server:call(Sw, mac_table).

%% @doc Counters: frames and bytes received, frames flooded, sent to one port, dropped
%% (too short, from a process not attached), injected.
stats(Sw) -> gen_server:call(Sw, stats).

set_aging(Sw, Ms) when is_integer(Ms), Ms > 0 -> gen_server:call(Sw, {set_aging, Ms}).

%% @doc `"52:54:00:12:34:56"'.
format_mac(<<A, B, C, D, E, F>>) ->
    lists:flatten(io_lib:format("~2.16.0b:~2.16.0b:~2.16.0b:~2.16.0b:~2.16.0b:~2.16.0b",
                                [A, B, C, D, E, F])).

%% gen_server

init(Opts) ->
    Aging = maps:get(aging_ms, Opts, ?DEFAULT_AGING_MS),
    schedule_purge(Aging),
    {ok, #state{aging_ms = Aging}}.

handle_call({attach, Pid}, _From, S = #state{ports = Ports}) ->
    case maps:is_key(Pid, Ports) of
        true -> {reply, ok, S};
        false -> {reply, ok, S#state{ports = Ports#{Pid => erlang:monitor(process, Pid)}}}
    end;
handle_call({detach, Pid}, _From, S) ->
    {reply, ok, drop_port(Pid, S)};
handle_call({subscribe, Pid}, _From, S = #state{subs = Subs}) ->
    case maps:is_key(Pid, Subs) of
        true -> {reply, ok, S};
        false -> {reply, ok, S#state{subs = Subs#{Pid => erlang:monitor(process, Pid)}}}
    end;
handle_call({unsubscribe, Pid}, _From, S = #state{subs = Subs}) ->
    case maps:take(Pid, Subs) of
        {Ref, Rest} ->
            erlang:demonitor(Ref, [flush]),
            {reply, ok, S#state{subs = Rest}};
        error ->
            {reply, ok, S}
    end;
handle_call(mac_table, _From, S = #state{macs = Macs, aging_ms = Aging}) ->
    Now = now_ms(),
    Rows = lists:sort([{Mac, Port, Now - Seen}
                       || {Mac, {Port, Seen}} <- maps:to_list(Macs), Now - Seen =< Aging]),
    {reply, Rows, S};
handle_call(stats, _From, S = #state{stats = St, ports = Ports, macs = Macs}) ->
    {reply, St#{ports => map_size(Ports), macs => map_size(Macs)}, S};
handle_call({set_aging, Ms}, _From, S) ->
    {reply, ok, S#state{aging_ms = Ms}}.

handle_cast({frame, From, Frame}, S = #state{ports = Ports}) ->
    case maps:is_key(From, Ports) of
        true -> {noreply, switch(From, Frame, S)};
        false -> {noreply, bump(dropped, S)}
    end;
handle_cast({inject, Frame}, S) ->
    {noreply, switch(injected, Frame, bump(injected, S))}.

handle_info({'DOWN', _Ref, process, Pid, _Why}, S = #state{subs = Subs}) ->
    S1 = drop_port(Pid, S),
    {noreply, S1#state{subs = maps:remove(Pid, Subs)}};
handle_info(purge, S = #state{macs = Macs, aging_ms = Aging}) ->
    Now = now_ms(),
    schedule_purge(Aging),
    {noreply, S#state{macs = maps:filter(fun(_, {_, Seen}) -> Now - Seen =< Aging end, Macs)}};
handle_info(_Other, S) ->
    {noreply, S}.

%% Aged entries are ignored at once and removed at the next purge.
schedule_purge(Aging) ->
    erlang:send_after(max(1000, Aging div 2), self(), purge).

%% The forwarding decision for one frame from `From' (a port, or `injected').
switch(_From, Frame, S) when byte_size(Frame) < ?MIN_FRAME ->
    bump(dropped, S);
switch(From, Frame = <<Dst:6/binary, Src:6/binary, _/binary>>, S0) ->
    Now = now_ms(),
    S1 = count(Frame, learn(From, Src, Now, S0)),
    [Sub ! {beambake_switch, self(), {seen, From, Frame}} || Sub <- maps:keys(S1#state.subs)],
    case destination(Dst, Now, S1) of
        {port, To} when To =:= From ->
            S1;                                   % it is on the port it came from
        {port, To} ->
            To ! {beambake_switch, self(), {frame, Frame}},
            bump(unicast, S1);
        flood ->
            [P ! {beambake_switch, self(), {frame, Frame}}
             || P <- maps:keys(S1#state.ports), P =/= From],
            bump(flooded, S1)
    end.

learn(injected, _Src, _Now, S) -> S;
learn(_Port, <<First, _/binary>>, _Now, S) when First band 1 =:= 1 -> S;  % not a source
learn(Port, Src, Now, S = #state{macs = Macs}) ->
    S#state{macs = Macs#{Src => {Port, Now}}}.

destination(<<First, _/binary>>, _Now, _S) when First band 1 =:= 1 ->
    flood;                                        % broadcast and multicast
destination(Dst, Now, #state{macs = Macs, aging_ms = Aging}) ->
    case Macs of
        #{Dst := {Port, Seen}} when Now - Seen =< Aging -> {port, Port};
        _ -> flood
    end.

drop_port(Pid, S = #state{ports = Ports, macs = Macs}) ->
    case maps:take(Pid, Ports) of
        {Ref, Rest} ->
            erlang:demonitor(Ref, [flush]),
            S#state{ports = Rest, macs = maps:filter(fun(_, {P, _}) -> P =/= Pid end, Macs)};
        error ->
            S
    end.

count(Frame, S = #state{stats = St = #{frames := F, bytes := B}}) ->
    S#state{stats = St#{frames := F + 1, bytes := B + byte_size(Frame)}}.

bump(Key, S = #state{stats = St}) ->
    S#state{stats = maps:update_with(Key, fun(V) -> V + 1 end, 1, St)}.

now_ms() -> erlang:monotonic_time(millisecond).
