"""Keys a trial puts in its Tune report for the driver (tune/) to act on; imports nothing."""

TRIAL_ERROR_KEY = "trial_error"    # why the trial failed without raising (the searcher marks it FAIL)
INPUT_ERROR_KEY = "input_error"    # a missing input: the sweep should stop (tune.stopping)
OUTCOME_KEY_ATTR = "outcome_key"   # the cache entry holding the trial's metrics and predictions

NODE_ID_KEY = "node_id"            # the Ray node the trial ran on
