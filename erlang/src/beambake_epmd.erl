%% @doc A port mapper inside the node, for guests that cannot run `epmd'
%% (rumprun: one program, no fork). Started by distribution through
%% `-epmd_module beambake_epmd' (OTP's erl_epmd callback API), it keeps the
%% node's own name and port and answers other nodes' EPMD requests for them
%% on TCP port 4369 (or `ERL_EPMD_PORT'): `PORT_PLEASE2_REQ' for this node,
%% `NAMES_REQ'. Lookups of other hosts' nodes go to their epmd as usual
%% (erl_epmd's functions). It is what the rumprun seed's `erlpmd' was, in one
%% module with no dependencies, so it can be put on any guest's code path.
%%
%% It must not register other nodes (`ALIVE2_REQ' is refused: this node is
%% the only one on its host) and does not stop the node when a client
%% misbehaves: every connection is its own process.
-module(beambake_epmd).
-behaviour(gen_server).

-export([start_link/0, register_node/2, register_node/3, port_please/2,
         port_please/3, listen_port_please/2, address_please/3, names/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).
%% For tests: the reply to one request, as bytes.
-export([reply/3]).

-define(PORT_PLEASE2_REQ, $z).
-define(PORT2_RESP, $w).
-define(NAMES_REQ, $n).
-define(EPMD_PORT, 4369).

%% ---- erl_epmd callback API -------------------------------------------------

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

register_node(Name, Port) ->
    register_node(Name, Port, inet).

register_node(Name, Port, _Family) ->
    gen_server:call(?MODULE, {register, to_list(Name), Port}, infinity).

port_please(Name, Host) ->
    port_please(Name, Host, infinity).

port_please(Name, Host, Timeout) ->
    erl_epmd:port_please(Name, Host, Timeout).

listen_port_please(_Name, _Host) ->
    {ok, 0}.

address_please(Name, Host, Family) ->
    erl_epmd:address_please(Name, Host, Family).

names(Host) ->
    case is_local(Host) of
        true -> {ok, gen_server:call(?MODULE, names)};
        false -> erl_epmd:names(Host)
    end.

%% ---- gen_server --------------------------------------------------------------

init([]) ->
    Port = epmd_port(),
    case gen_tcp:listen(Port, [binary, {packet, 2}, {active, false},
                               {reuseaddr, true}]) of
        {ok, L} ->
            Self = self(),
            spawn_link(fun() -> accept(L, Self) end),
            {ok, #{listen => L, nodes => []}};
        {error, Reason} ->
            {stop, {listen, Port, Reason}}
    end.

handle_call({register, Name, Port}, _From, S = #{nodes := Nodes}) ->
    Creation = rand:uniform(16#fffffff0) + 3,
    {reply, {ok, Creation}, S#{nodes := lists:keystore(Name, 1, Nodes, {Name, Port})}};
handle_call(names, _From, S = #{nodes := Nodes}) ->
    {reply, Nodes, S};
handle_call(nodes, _From, S = #{nodes := Nodes}) ->
    {reply, Nodes, S}.

handle_cast(_, S) ->
    {noreply, S}.

handle_info(_, S) ->
    {noreply, S}.

%% ---- the EPMD server -----------------------------------------------------------

accept(L, Server) ->
    case gen_tcp:accept(L) of
        {ok, Sock} ->
            Pid = spawn(fun() -> receive go -> serve(Sock, Server) end end),
            _ = gen_tcp:controlling_process(Sock, Pid),
            Pid ! go,
            accept(L, Server);
        {error, closed} ->
            ok;
        {error, _} ->
            accept(L, Server)
    end.

serve(Sock, Server) ->
    case gen_tcp:recv(Sock, 0, 10000) of
        {ok, Req} ->
            Nodes = gen_server:call(Server, nodes),
            ok = inet:setopts(Sock, [{packet, raw}]),
            _ = gen_tcp:send(Sock, reply(Req, Nodes, epmd_port())),
            gen_tcp:close(Sock);
        {error, _} ->
            gen_tcp:close(Sock)
    end.

%% @doc The bytes answering request `Req' (without its length prefix) when
%% `Nodes' ([{Name, Port}]) are registered; empty for a request that gets no
%% answer (the connection is then closed, as epmd does).
reply(<<?PORT_PLEASE2_REQ, Name/binary>>, Nodes, _EpmdPort) ->
    case lists:keyfind(binary_to_list(Name), 1, Nodes) of
        {_, Port} ->
            <<?PORT2_RESP, 0, Port:16, $M, 0, 6:16, 5:16,
              (byte_size(Name)):16, Name/binary, 0:16>>;
        false ->
            <<?PORT2_RESP, 1>>
    end;
reply(<<?NAMES_REQ>>, Nodes, EpmdPort) ->
    Lines = [io_lib:format("name ~ts at port ~p~n", [N, P]) || {N, P} <- Nodes],
    iolist_to_binary([<<EpmdPort:32>>, Lines]);
reply(_, _, _) ->
    <<>>.

epmd_port() ->
    case os:getenv("ERL_EPMD_PORT") of
        false -> ?EPMD_PORT;
        P -> list_to_integer(P)
    end.

is_local(Host) ->
    {ok, Me} = inet:gethostname(),
    lists:member(to_list(Host), [Me, "localhost", "127.0.0.1"]).

to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(L) when is_list(L) -> L;
to_list(B) when is_binary(B) -> binary_to_list(B).
