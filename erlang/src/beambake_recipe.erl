%% A beambake recipe as Erlang terms, written as TOML: the one encoder behind the rebar3
%% plugin (`{beambake, [...]}` in rebar.config) and the mix task (`beambake: [...]` in
%% mix.exs). It knows TOML, not the recipe's schema: beambake validates the file it writes
%% (unknown keys, bad values) and the tools map its errors back (beambake_tool).
%%
%% The rule, documented once (README, "rebar3 plugin and mix task"):
%%   - a proplist / keyword list (or a map) is a table: `{vm, [{memory_mib, 256}]}` is `[vm]`;
%%   - a list of proplists is an array of tables: `{check, [[{type, tcp_echo}]]}` is `[[check]]`;
%%   - integers, floats and booleans are themselves; any other atom, a binary (an Elixir
%%     string) or an Erlang string is a TOML string; another list is an array; `[]` is an
%%     empty array (an empty string is `<<>>` / `""` in Elixir).
-module(beambake_recipe).

-export([to_toml/1]).

-type key() :: atom() | binary() | string().
-type value() :: term().
-type table() :: [{key(), value()}] | #{key() => value()}.
-export_type([table/0]).

%% @doc The TOML text of `Table' (UTF-8), or `{error, Why}' naming the key whose value
%% has no TOML form.
-spec to_toml(table()) -> {ok, binary()} | {error, string()}.
to_toml(Table) ->
    try
        {ok, unicode:characters_to_binary(table([], entries([], Table)))}
    catch
        throw:{bad_value, Path, V} ->
            {error, lists:flatten(io_lib:format("~ts: no TOML form for ~tp", [dotted(Path), V]))};
        throw:{not_a_table, Path, V} ->
            {error, lists:flatten(io_lib:format(
                "~ts: expected a list of {Key, Value} (a table), got ~tp",
                [case Path of [] -> "the section"; _ -> dotted(Path) end, V]))}
    end.

%% The entries of a table as [{KeyText, Value}], in the order given.
entries(Path, M) when is_map(M) ->
    entries(Path, lists:sort(maps:to_list(M)));
entries(Path, L) when is_list(L) ->
    [case E of
         {K, V} when is_atom(K); is_binary(K) -> {key_text(K), V};
         {K, V} when is_list(K) -> {key_text(K), V};
         _ -> throw({not_a_table, Path, E})
     end || E <- L];
entries(Path, V) ->
    throw({not_a_table, Path, V}).

key_text(K) when is_atom(K) -> atom_to_list(K);
key_text(K) when is_binary(K) -> unicode:characters_to_list(K);
key_text(K) -> K.

%% One table at Path: its plain keys first (TOML puts them before any sub-table header),
%% then its sub-tables, then its arrays of tables.
table(Path, Entries) ->
    {Plain, Tables, Arrays} = split(Entries, [], [], []),
    [[[key(K), " = ", value(Path ++ [K], V), "\n"] || {K, V} <- Plain],
     [sub_table(Path ++ [K], V) || {K, V} <- Tables],
     [[array_table(Path ++ [K], T) || T <- V] || {K, V} <- Arrays]].

split([], P, T, A) -> {lists:reverse(P), lists:reverse(T), lists:reverse(A)};
split([{K, V} | Rest], P, T, A) ->
    case kind(V) of
        table -> split(Rest, P, [{K, V} | T], A);
        tables -> split(Rest, P, T, [{K, V} | A]);
        plain -> split(Rest, [{K, V} | P], T, A)
    end.

sub_table(Path, V) ->
    ["\n[", dotted(Path), "]\n", table(Path, entries(Path, V))].

array_table(Path, V) ->
    ["\n[[", dotted(Path), "]]\n", table(Path, entries(Path, V))].

kind(V) when is_map(V) -> table;
kind([_ | _] = V) ->
    case is_table(V) of
        true -> table;
        false ->
            case lists:all(fun(E) -> is_map(E) orelse (is_list(E) andalso is_table(E)) end, V) of
                true -> tables;
                false -> plain
            end
    end;
kind(_) -> plain.

is_table([_ | _] = L) ->
    lists:all(fun({K, _}) -> is_atom(K) orelse is_binary(K) orelse io_lib:printable_unicode_list(K);
                 (_) -> false
              end, L);
is_table(_) -> false.

value(_, true) -> "true";
value(_, false) -> "false";
value(_, I) when is_integer(I) -> integer_to_list(I);
value(_, F) when is_float(F) -> float_to_list(F, [short]);
value(_, A) when is_atom(A) -> string(atom_to_list(A));
value(Path, B) when is_binary(B) ->
    case unicode:characters_to_list(B) of
        S when is_list(S) -> string(S);
        _ -> throw({bad_value, Path, B})
    end;
value(Path, L) when is_list(L) ->
    case L =/= [] andalso io_lib:printable_unicode_list(L) of
        true -> string(L);
        false -> ["[", lists:join(", ", [value(Path, E) || E <- L]), "]"]
    end;
value(Path, V) ->
    throw({bad_value, Path, V}).

key(K) ->
    case K =/= [] andalso lists:all(fun bare/1, K) of
        true -> K;
        false -> string(K)
    end.

bare(C) -> (C >= $a andalso C =< $z) orelse (C >= $A andalso C =< $Z)
               orelse (C >= $0 andalso C =< $9) orelse C =:= $_ orelse C =:= $-.

dotted(Path) -> lists:join(".", [key(K) || K <- Path]).

%% A TOML basic string.
string(S) -> [$", [escape(C) || C <- S], $"].

escape($") -> "\\\"";
escape($\\) -> "\\\\";
escape($\n) -> "\\n";
escape($\t) -> "\\t";
escape($\r) -> "\\r";
escape($\b) -> "\\b";
escape($\f) -> "\\f";
escape(C) when C < 16#20; C =:= 16#7f -> io_lib:format("\\u~4.16.0B", [C]);
escape(C) -> C.
