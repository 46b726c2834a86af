defmodule Mix.Beambake do
  @moduledoc """
  What `mix beambake.build` and `mix beambake.smoke` share: `mix release` in the current
  `MIX_ENV`, the `beambake: [...]` keyword list of `mix.exs` written as beambake's recipe
  (`_build/ENV/beambake/recipe.toml`, by the Erlang module `beambake_recipe`: keyword lists
  are tables, a list of keyword lists an array of tables), then the `beambake` binary on it
  (`beambake_binary: path` in the project config, else `$BEAMBAKE`, else `beambake` on PATH).
  beambake validates the recipe; its errors about it are shown as errors in `mix.exs`.
  """

  @origin "mix.exs: beambake: [...]"
  @switches [
    out: :string,
    target: :string,
    verbose: :boolean,
    kernel: :string,
    modules: :string,
    no_bake: :boolean,
    junit: :string,
    json: :boolean
  ]

  @doc "Runs `beambake COMMAND` (:build or :smoke) over the project's release."
  def run(command, argv) do
    {opts, rest} = OptionParser.parse!(argv, strict: @switches, aliases: [v: :verbose, o: :out])
    if rest != [], do: Mix.raise("mix beambake.#{command}: unexpected arguments #{inspect(rest)}")
    config = Mix.Project.config()

    bin =
      case :beambake_tool.find_binary(
             to_charlist_or_undefined(config[:beambake_binary]),
             ~c"beambake_binary: PATH in mix.exs's project/0"
           ) do
        {:ok, bin} -> bin
        {:error, msg} -> Mix.raise(List.to_string(msg))
      end

    name = release_name(config)
    Mix.Task.run("release", ["--overwrite", "--quiet"])
    base = Path.expand(Mix.Project.build_path())
    rel_dir = Path.join([base, "rel", name])
    recipe_path = Path.join([base, "beambake", "recipe.toml"])

    recipe =
      case :beambake_tool.recipe(Keyword.get(config, :beambake, []), %{
             source: String.to_charlist(rel_dir),
             name: String.to_charlist(name),
             target: to_charlist_or_undefined(opts[:target])
           }) do
        {:ok, recipe} -> recipe
        {:error, msg} -> Mix.raise("#{@origin}: #{msg}")
      end

    text =
      case :beambake_tool.write_recipe(String.to_charlist(recipe_path), recipe) do
        {:ok, text} -> text
        {:error, msg} -> Mix.raise("#{@origin}: #{msg}")
      end

    out = opts[:out] || Path.join([base, "beambake", "out"])

    flags = [
      {:out, String.to_charlist(out)} | Keyword.delete(opts, :out) |> Keyword.delete(:target)
    ]

    flags =
      Enum.map(flags, fn {k, v} -> {k, if(is_binary(v), do: String.to_charlist(v), else: v)} end)

    args = :beambake_tool.args(command, String.to_charlist(recipe_path), flags)

    print =
      if opts[:json],
        do: fn line -> IO.puts(line) end,
        else: fn line -> Mix.shell().info(List.to_string(line)) end

    case :beambake_tool.run(bin, args, print) do
      :ok ->
        :ok

      {:error, status, err} ->
        msg =
          :beambake_tool.explain(
            err,
            String.to_charlist(recipe_path),
            text,
            String.to_charlist(@origin)
          )

        Mix.raise("#{msg} (beambake exited with status #{status})")
    end
  end

  defp to_charlist_or_undefined(nil), do: :undefined
  defp to_charlist_or_undefined(path), do: String.to_charlist(path)

  # The release `mix release` makes: the first of `releases:`, else the app's name.
  defp release_name(config) do
    case config[:releases] do
      [{name, _} | _] ->
        Atom.to_string(name)

      _ ->
        case config[:app] do
          nil ->
            Mix.raise(
              "no release configured: an umbrella project needs `releases: [...]` in mix.exs"
            )

          app ->
            Atom.to_string(app)
        end
    end
  end
end
