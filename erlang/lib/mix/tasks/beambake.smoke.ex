defmodule Mix.Tasks.Beambake.Smoke do
  @shortdoc "Builds the release's VM image, boots it and runs the recipe's checks"
  @moduledoc """
  `mix release` (current `MIX_ENV`), then `beambake smoke` on the recipe written from
  `beambake: [...]` in mix.exs. Options: as `mix beambake.build`, plus `--junit FILE`.
  See Mix.Beambake.
  """
  use Mix.Task

  @impl true
  def run(argv), do: Mix.Beambake.run(:smoke, argv)
end
