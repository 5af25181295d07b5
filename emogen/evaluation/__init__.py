"""Evaluation: classification metrics, paired statistics and the linear probe every SER is compared with."""
