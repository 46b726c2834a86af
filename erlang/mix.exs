# beambake's Erlang app as a mix project too, so an Elixir project can use it as a path
# or git dependency without rebar3 or Hex: mix compiles src/*.erl itself, and lib/ holds
# the mix tasks `mix beambake.build` and `mix beambake.smoke` (Mix.Beambake).
#
#     {:beambake, path: "../beambake/erlang", runtime: false}
defmodule Beambake.MixProject do
  use Mix.Project

  def project do
    [
      app: :beambake,
      version: "0.1.0",
      elixir: "~> 1.14",
      erlc_options: [:debug_info],
      deps: []
    ]
  end

  def application do
    [extra_applications: [:kernel, :stdlib]]
  end
end
