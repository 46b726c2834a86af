defmodule HelloMix.Application do
  @moduledoc "Prints a line once started, then idles: enough to prove a release boots."
  use Application

  @impl true
  def start(_type, _args) do
    IO.puts("Hello from mix on #{:erlang.system_info(:otp_release)}")
    Supervisor.start_link([], strategy: :one_for_one, name: HelloMix.Supervisor)
  end
end
