%% `rebar3 beambake build` (see rebar3_beambake).
-module(rebar3_beambake_prv_build).

-export([init/1, do/1, format_error/1]).

init(State) -> rebar3_beambake:provider(build, ?MODULE, State).

do(State) -> rebar3_beambake:do(build, State).

format_error(Reason) -> rebar3_beambake:format_error(Reason).
