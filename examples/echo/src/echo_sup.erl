-module(echo_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    {ok, Port} = application:get_env(echo, port),
    HttpPort = application:get_env(echo, http_port, 8081),
    Echo = #{id => echo_server,
             start => {echo_server, start_link, [Port]},
             restart => permanent,
             type => worker},
    Http = #{id => echo_http,
             start => {echo_http, start_link, [HttpPort]},
             restart => permanent,
             type => worker},
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, [Echo, Http]}}.
