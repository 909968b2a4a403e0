# Sourced by the screen scripts: run TAG ARGS... trains one row into $out/TAG (log in $out/TAG.log),
# skips a finished row, resumes an interrupted one. Needs $out, $epochs and the array $base (arguments
# every row shares).
export OMP_WAIT_POLICY=PASSIVE  # a busy core does not stall the other thread
run() {
  local tag=$1; shift
  [ -f "$out/$tag/summary.json" ] && { echo "skip $tag (done)"; return; }
  local extra=(); [ -f "$out/$tag/last.ckpt" ] && extra=(--resume)
  python -m model.train --threads 2 --epochs "$epochs" --out "$out/$tag" "${base[@]}" "$@" "${extra[@]}" \
    > "$out/$tag.log" 2>&1 && echo "done $tag" || echo "FAILED $tag"
}
