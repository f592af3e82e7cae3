"""The write pipeline: plan -> render -> encode -> commit, with the producer and the sink swappable.

Every write drives the same steps with its own producer and sink:

* :mod:`.plan`: content hashes, what is stored already, the render spec, the view cache's key;
* :mod:`.records`: the named records between the steps, and the producer and sink roles;
* producers: :class:`.local.LocalProducer` (this machine: a render child and encode
  threads), :class:`.cached.CachedFirstProducer` (``index reembed``: the render cache
  first) and ``ftspl.scale.driver.RayProducer`` (actor pools on a Ray cluster);
* :mod:`.encode`: the one encode step (every producer's);
* :mod:`.commit`: the batch-and-commit loop (:class:`.commit.Committer`) and the
  index's sink; the others are ``ftspl.engine.index.shards.ShardWriter`` (Parquet)
  and ``ftspl.engine.index.reembed_parts.PartSink`` (a re-embed's part files).
"""
