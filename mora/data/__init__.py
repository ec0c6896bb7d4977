"""Task data builders, chosen by `_target_` in conf/data/*.yaml. Each returns a task object with a
`train_dataset()` of {input_ids, labels} rows (labels -100 where no loss is taken)."""
