%% `rebar3 beambake smoke` (see rebar3_beambake).
-module(rebar3_beambake_prv_smoke).

-export([init/1, do/1, format_error/1]).

init(State) -> rebar3_beambake:provider(smoke, ?MODULE, State).

do(State) -> rebar3_beambake:do(smoke, State).

format_error(Reason) -> rebar3_beambake:format_error(Reason).
