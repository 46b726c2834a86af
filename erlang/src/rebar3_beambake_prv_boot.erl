%% `rebar3 beambake boot` (see rebar3_beambake).
-module(rebar3_beambake_prv_boot).

-export([init/1, do/1, format_error/1]).

init(State) -> rebar3_beambake:provider(boot, ?MODULE, State).

do(State) -> rebar3_beambake:do(boot, State).

format_error(Reason) -> rebar3_beambake:format_error(Reason).
