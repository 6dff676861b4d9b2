"""The log budget (policy/logbudget.py) with a fake clock."""
import logging
import unittest

from policy.logbudget import TRACEBACK_INTERVAL, LogBudget

LOGGER = logging.getLogger("tests.logbudget")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class LogBudgetTests(unittest.TestCase):

    def setUp(self):
        self.clock = FakeClock()
        self.budget = LogBudget(self.clock, per_second=1, burst=2)

    def test_lines_past_the_burst_are_counted_and_the_count_comes_with_the_next(self):
        with self.assertLogs(LOGGER, "INFO") as logs:
            for index in range(5):
                self.budget.log(LOGGER, logging.INFO, "line %d", index)
            self.clock.now += 1.0
            self.budget.log(LOGGER, logging.INFO, "later")
        self.assertEqual([r.getMessage() for r in logs.records],
                         ["line 0", "line 1",
                          "later (3 such lines not logged before this one)"])

    def test_a_level_not_logged_costs_nothing_from_the_budget(self):
        for _ in range(10):
            self.budget.log(LOGGER, logging.DEBUG, "not logged at INFO")
        with self.assertLogs(LOGGER, "INFO") as logs:
            self.budget.log(LOGGER, logging.INFO, "first")
        self.assertEqual(logs.records[0].getMessage(), "first")

    def test_a_traceback_is_due_once_per_kind_per_interval(self):
        self.assertTrue(self.budget.traceback_due("kind"))
        self.assertFalse(self.budget.traceback_due("kind"))
        self.assertTrue(self.budget.traceback_due("other kind"))
        self.clock.now += TRACEBACK_INTERVAL
        self.assertTrue(self.budget.traceback_due("kind"))


if __name__ == "__main__":
    unittest.main()
