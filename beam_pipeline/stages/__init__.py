"""The pipeline's stages, one composite PTransform per module, in the order run.build() wires them:

  expand.ExpandInputs   input patterns -> Chunks of member references, reshuffled
  decode.DecodeImages   Chunk -> (row templates, model inputs) + finished error rows
  score.ScoreImages     model inputs -> scored rows (+ flagged rows for heatmaps)
  heatmaps.AddHeatmaps  flagged rows -> rows with heatmap_path, overlay PNGs written
  tables.WriteResults   rows -> image / series / study tables, counts, then Finalise
"""
