# A TCP echo server on port 8080 in Elixir, packed into a VM by beambake's mix task:
# `MIX_ENV=prod mix beambake.smoke` makes the release (`mix release`), builds a microVM
# image and checks it. beambake's app comes from this repository as a path dependency
# (no Hex); `runtime: false` keeps it out of the release.
defmodule EchoMix.MixProject do
  use Mix.Project

  def project do
    [
      app: :echo_mix,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [{:beambake, path: "../../erlang", runtime: false}],
      # beambake's recipe as keyword lists (README, "rebar3 plugin and mix task"); the
      # task fills in `name`, `[release] source` and `target` (microvm) when absent.
      beambake: [
        target: :microvm,
        vm: [memory_mib: 256],
        # The modules a run on the host loaded by the end of the boot script load at
        # start; any other on its first call.
        launch: [code_loading: :traced],
        network: [mode: :tap, guest: "10.0.120.101/24", host: "10.0.120.100"],
        check: [[type: :tcp_echo, port: 8080, payload: "hello from mix"]],
        smoke: [ready_timeout_s: 120]
      ]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {EchoMix, []}]
  end
end
