defmodule Mix.Tasks.Beambake.Build do
  @shortdoc "Builds the project's release into a VM image with beambake"
  @moduledoc """
  `mix release` (current `MIX_ENV`), then `beambake build` on the recipe written from
  `beambake: [...]` in mix.exs. Options: `--out DIR`, `--target T`, `-v`, `--kernel`,
  `--modules`, `--no-bake`, `--json`. See Mix.Beambake.
  """
  use Mix.Task

  @impl true
  def run(argv), do: Mix.Beambake.run(:build, argv)
end
