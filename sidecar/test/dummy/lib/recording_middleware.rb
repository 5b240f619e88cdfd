# frozen_string_literal: true

# Server middleware: records what it saw and hands its context to the job; does not
# yield when the job hash carries "skip_me" (Sidekiq then counts the job as done).
class RecordingMiddleware
  def call(worker, job, queue)
    context = {"jid" => job["jid"], "queue" => queue, "worker_jid" => worker.jid, "class" => job["class"]}
    Recorder.add(:middleware, context)
    return if job["skip_me"]

    Thread.current[:middleware_context] = context
    yield
  ensure
    Thread.current[:middleware_context] = nil
  end
end
