"""The strategy in a ServerApp written the way a Flower user writes one (as with FedAvg)."""

from flwr.app import Context, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from flower_app.apps.client_app import app as client_app
from flower_app.apps.runner import InProcessGrid
from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data.setup import build
from flower_app.modes.server_model import SplitServer
from strategies.strategy import SplitPrefixStrategy

app = ServerApp()
results: list[Result] = []


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = load_config(context.run_config)
    settings = split_settings(config)
    server = SplitServer(build(config), settings)
    strategy = SplitPrefixStrategy(server, settings)
    result = strategy.start(
        grid=grid,
        initial_arrays=server.initial_arrays(),
        num_rounds=2,
        evaluate_fn=server.evaluate_fn(every=1, num_rounds=2),
    )
    results.append(result)


def test_a_users_server_app_calls_start_like_fedavg_and_reads_the_result():
    # Prepare
    run_config = {"config": "test"}
    grid = InProcessGrid(client_app, num_nodes=3, run_config=run_config)

    # Execute: what Flower's ServerApp runtime does with the registered main function
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))

    # Assert
    [result] = results
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    accuracy = [result.evaluate_metrics_serverapp[r]["accuracy"] for r in (0, 1, 2)]
    assert accuracy[2] > accuracy[0]  # it learns
    assert result.train_metrics_clientapp[1]["bytes-up"] > 0
    initial = build(load_config(run_config)).initial_state
    assert set(result.arrays) == set(initial)
    assert any((result.arrays[k].numpy() != initial[k]).any() for k in initial)
