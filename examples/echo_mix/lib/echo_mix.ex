defmodule EchoMix do
  @moduledoc "A TCP echo server on port 8080: what arrives is sent back."
  use Application

  @impl true
  def start(_type, _args) do
    {:ok, listen} = :gen_tcp.listen(8080, [:binary, active: false, reuseaddr: true, packet: :raw])

    pid = spawn_link(fn -> accept(listen) end)
    :ok = :gen_tcp.controlling_process(listen, pid)
    {:ok, pid}
  end

  defp accept(listen) do
    {:ok, sock} = :gen_tcp.accept(listen)
    spawn(fn -> echo(sock) end)
    accept(listen)
  end

  defp echo(sock) do
    case :gen_tcp.recv(sock, 0) do
      {:ok, data} ->
        :ok = :gen_tcp.send(sock, data)
        echo(sock)

      {:error, _} ->
        :gen_tcp.close(sock)
    end
  end
end
