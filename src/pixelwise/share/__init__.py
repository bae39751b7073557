"""Sharing runs: ``pixelwise push`` to the Hugging Face Hub with a generated model card (pulling is
``pixelwise.hubfiles``, shared by ``Segmenter.load``, ``serve`` and ``model.init_from``)."""
