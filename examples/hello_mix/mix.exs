# A minimal Elixir release (`MIX_ENV=prod mix release`), used by beambake's tests of the
# mix release layout.
defmodule HelloMix.MixProject do
  use Mix.Project

  def project do
    [
      app: :hello_mix,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: []
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {HelloMix.Application, []}]
  end
end
