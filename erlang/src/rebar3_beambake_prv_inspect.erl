%% `rebar3 beambake inspect` (see rebar3_beambake).
-module(rebar3_beambake_prv_inspect).

-export([init/1, do/1, format_error/1]).

init(State) -> rebar3_beambake:provider(inspect, ?MODULE, State).

do(State) -> rebar3_beambake:do(inspect, State).

format_error(Reason) -> rebar3_beambake:format_error(Reason).
