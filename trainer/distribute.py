"""Choose the tf.distribute strategy: MirroredStrategy over all GPUs, else default.

`cpu_replicas` exists for tests and CPU experiments: it splits the one
physical CPU into logical devices so MirroredStrategy runs without GPUs. It
must be called before TensorFlow initialises its devices.
"""
import logging

import tensorflow as tf


def get_strategy(cpu_replicas=0):
    gpus = tf.config.list_physical_devices("GPU")
    if cpu_replicas < 0:
        raise ValueError(f"cpu_replicas must be >= 0, got {cpu_replicas}")
    if gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        strategy = tf.distribute.MirroredStrategy()
    elif cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        # Asking for logical devices would initialise the runtime, after which the
        # split can no longer be set: read the configuration instead.
        configured = tf.config.get_logical_device_configuration(cpu) or []
        if len(configured) < cpu_replicas:
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
            except RuntimeError as e:
                raise ValueError(f"cannot split the CPU into {cpu_replicas} devices after TensorFlow "
                                 f"started ({len(configured) or 1} configured): {e}") from e
        logical = tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in logical[:cpu_replicas]])
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("strategy %s with %d replica(s), GPUs: %s",
                 type(strategy).__name__, strategy.num_replicas_in_sync, [g.name for g in gpus])
    return strategy
