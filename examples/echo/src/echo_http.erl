%% A minimal HTTP/1.0 responder on port 8081 (for smoke checks): every request gets
%% "200 OK" and a body naming the node and the OTP release.
-module(echo_http).
-export([start_link/1, init/2]).

start_link(Port) ->
    proc_lib:start_link(?MODULE, init, [self(), Port]).

init(Parent, Port) ->
    Opts = [binary, {active, false}, {reuseaddr, true}, {packet, http_bin}],
    case gen_tcp:listen(Port, Opts) of
        {ok, Listen} ->
            proc_lib:init_ack(Parent, {ok, self()}),
            accept(Listen);
        {error, Reason} ->
            proc_lib:init_ack(Parent, {error, Reason})
    end.

accept(Listen) ->
    {ok, Sock} = gen_tcp:accept(Listen),
    Pid = spawn(fun() -> receive go -> serve(Sock) end end),
    ok = gen_tcp:controlling_process(Sock, Pid),
    Pid ! go,
    accept(Listen).

serve(Sock) ->
    case read_request(Sock) of
        ok ->
            Body = io_lib:format("echo ok ~s ~s~n",
                                 [node(), erlang:system_info(otp_release)]),
            Len = iolist_size(Body),
            gen_tcp:send(Sock, ["HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n",
                                "Content-Length: ", integer_to_list(Len), "\r\n\r\n", Body]);
        error ->
            ok
    end,
    gen_tcp:close(Sock).

read_request(Sock) ->
    case gen_tcp:recv(Sock, 0, 5000) of
        {ok, {http_request, _Method, _Uri, _Vsn}} -> read_headers(Sock);
        _ -> error
    end.

read_headers(Sock) ->
    case gen_tcp:recv(Sock, 0, 5000) of
        {ok, http_eoh} -> ok;
        {ok, {http_header, _, _, _, _}} -> read_headers(Sock);
        _ -> error
    end.
