%% Starts two OTP httpd instances on the application's document root: plain HTTP and
%% HTTPS with the certificate in priv/tls.
-module(web_app).
-behaviour(application).
-export([start/2, stop/1]).

start(_Type, _Args) ->
    {ok, Http} = application:get_env(web, http_port),
    {ok, Https} = application:get_env(web, https_port),
    Priv = code:priv_dir(web),
    Common = [{server_name, "web"},
              {server_root, "/tmp"},
              {document_root, filename:join(Priv, "www")},
              {directory_index, ["index.html"]},
              {bind_address, any},
              {modules, [mod_alias, mod_dir, mod_get, mod_head]}],
    Tls = filename:join(Priv, "tls"),
    {ok, _} = inets:start(httpd, [{port, Http} | Common]),
    {ok, _} = inets:start(httpd, [{port, Https},
                                  {socket_type, {ssl, [{certfile, filename:join(Tls, "server.pem")},
                                                       {keyfile, filename:join(Tls, "server.key")}]}}
                                  | Common]),
    io:format("web: HTTP on ~p, HTTPS on ~p~n", [Http, Https]),
    web_sup:start_link().

stop(_State) ->
    ok.
