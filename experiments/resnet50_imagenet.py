"""ResNet-50 on ImageNet with the flax example's recipe.

    python launch.py --config experiments/resnet50_imagenet.py --config.dataset.data_dir=DIR

Batch 1024, SGD with Nesterov momentum 0.9 at 0.1 * batch / 256, 5 warmup epochs then
cosine decay, 100 epochs, L2 weight decay 1e-4 on kernels, bfloat16 compute,
Inception-style random-resized crops and flips at 224x224. Label smoothing is off as
in the flax example (``--config.loss.label_smoothing=0.1`` turns it on). Expected:
76.1-76.3% top-1 (the flax example's reported result for this recipe); needs the
ImageNet tfds data (manual download) and accelerators: not run on the development
machine.
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "resnet50"
    c.dataset.name = "imagenet2012"
    c.dataset.image_size = 224
    c.dataset.flip = True
    c.dataset.eval_batch_size = 1000
    c.batch_size = 1024
    c.num_epochs = 100
    c.dtype = "bfloat16"
    c.optimizer.name = "nesterov"
    c.optimizer.learning_rate = 0.1 * c.batch_size / 256
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.weight_decay_mode = "l2"
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_epochs = 5
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.eval_every_steps = 1252  # one epoch at batch 1024
    return c
