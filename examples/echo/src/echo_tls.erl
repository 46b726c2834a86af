%% TLS listeners for smoke checks, started only when configured (app env `tls_port`,
%% `https_port`; the `tls` profile's config/tls.config sets both): a TLS echo server and
%% an HTTPS responder answering like echo_http. The certificate and key are the app env's
%% `certfile`/`keyfile`, by default the test fixtures in priv/tls (see its README).
-module(echo_tls).
-export([start_link/2, init/3]).

start_link(Kind, Port) ->
    proc_lib:start_link(?MODULE, init, [self(), Kind, Port]).

init(Parent, Kind, Port) ->
    %% Started by the release (before echo); this covers a node that did not.
    {ok, _} = application:ensure_all_started(ssl),
    Opts = [binary, {active, false}, {reuseaddr, true},
            {certfile, file_env(certfile, "server.pem")},
            {keyfile, file_env(keyfile, "server.key")}],
    case ssl:listen(Port, Opts) of
        {ok, Listen} ->
            proc_lib:init_ack(Parent, {ok, self()}),
            accept(Kind, Listen);
        {error, Reason} ->
            proc_lib:init_ack(Parent, {error, Reason})
    end.

file_env(Key, Default) ->
    case application:get_env(echo, Key) of
        {ok, File} -> File;
        undefined -> filename:join([code:priv_dir(echo), "tls", Default])
    end.

accept(Kind, Listen) ->
    case ssl:transport_accept(Listen) of
        {ok, Sock} ->
            Pid = spawn(fun() -> receive go -> handshake(Kind, Sock) end end),
            ok = ssl:controlling_process(Sock, Pid),
            Pid ! go;
        {error, _} ->
            ok
    end,
    accept(Kind, Listen).

%% A client that does not speak TLS (or gives up) only ends its own connection.
handshake(Kind, Sock) ->
    case ssl:handshake(Sock, 30000) of
        {ok, Tls} -> serve(Kind, Tls);
        {error, _} -> ok
    end.

serve(echo, Tls) ->
    case ssl:recv(Tls, 0) of
        {ok, Data} ->
            ok = ssl:send(Tls, Data),
            serve(echo, Tls);
        {error, _} ->
            ssl:close(Tls)
    end;
serve(https, Tls) ->
    case read_request(Tls, <<>>) of
        ok ->
            Body = io_lib:format("echo ok over tls ~s ~s~n",
                                 [node(), erlang:system_info(otp_release)]),
            Len = iolist_size(Body),
            ssl:send(Tls, ["HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n",
                           "Content-Length: ", integer_to_list(Len), "\r\n\r\n", Body]);
        error ->
            ok
    end,
    ssl:close(Tls).

%% Reads up to the end of the request's headers.
read_request(Tls, Acc) when byte_size(Acc) < 65536 ->
    case binary:match(Acc, <<"\r\n\r\n">>) of
        nomatch ->
            case ssl:recv(Tls, 0, 5000) of
                {ok, Data} -> read_request(Tls, <<Acc/binary, Data/binary>>);
                {error, _} -> error
            end;
        _ ->
            ok
    end;
read_request(_Tls, _Acc) ->
    error.
