%% A digest of a directory tree, for beambake's tests: they call it on a guest node with
%% rpc (e.g. on an ISO 9660 image the guest kernel mounted) and compare the answer with
%% the same call on the host's copy of the tree.
-module(echo_tree).
-export([digest/1, digest_hex/1]).

-include_lib("kernel/include/file.hrl").

%% Sorted [{RelativePath, Type, Mode band 8#7777, Size, Md5 | LinkTarget}] of every entry
%% under Dir (symlinks are not followed).
-spec digest(file:filename()) -> [tuple()].
digest(Dir) ->
    lists:sort(walk(Dir, "")).

%% The md5 of digest/1's external term format, as hex: short enough for a check's
%% expected value, equal on two nodes of the same OTP exactly when the digests are.
-spec digest_hex(file:filename()) -> string().
digest_hex(Dir) ->
    lists:flatten([io_lib:format("~2.16.0b", [B]) || <<B>> <= erlang:md5(term_to_binary(digest(Dir)))]).

walk(Dir, Rel) ->
    {ok, Names} = file:list_dir(filename:join(Dir, Rel)),
    lists:flatmap(fun(Name) -> entry(Dir, join(Rel, Name)) end, Names).

entry(Dir, Rel) ->
    Path = filename:join(Dir, Rel),
    {ok, #file_info{type = Type, mode = Mode, size = Size}} = file:read_link_info(Path),
    Perm = Mode band 8#7777,
    case Type of
        directory -> [{Rel, directory, Perm, 0, none} | walk(Dir, Rel)];
        regular ->
            {ok, Bin} = file:read_file(Path),
            [{Rel, regular, Perm, Size, erlang:md5(Bin)}];
        symlink ->
            {ok, Target} = file:read_link(Path),
            [{Rel, symlink, 0, 0, Target}];
        Other -> [{Rel, Other, Perm, 0, none}]
    end.

join("", Name) -> Name;
join(Rel, Name) -> Rel ++ "/" ++ Name.
