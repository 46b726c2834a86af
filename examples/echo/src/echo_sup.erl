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
    %% TLS listeners only when configured (the release must start ssl then); started
    %% first, so that the echo port answering means every listener is up.
    Tls = [#{id => {echo_tls, Kind},
             start => {echo_tls, start_link, [Kind, TlsPort]},
             restart => permanent,
             type => worker}
           || {Kind, Key} <- [{echo, tls_port}, {https, https_port}],
              {ok, TlsPort} <- [application:get_env(echo, Key)]],
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, Tls ++ [Echo, Http]}}.
