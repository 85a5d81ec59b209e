"""The training engine on the driver: a TrainingPlan in, a TrainingResult out (data preparation, the parameter-server session, the Spark job, progress, history)."""
