# frozen_string_literal: true

require "sidekiq/api"  # Sidekiq::Stats for GET /stats: the client alone does not load it

# The demo's HTTP surface: enqueue jobs, look at what they recorded, health.
class DemoController < ApplicationController
  # GET /health
  def health
    ActiveRecord::Base.connection.select_value("SELECT 1")
    render json: {status: "ok", rails: Rails.version, sidekiq: Sidekiq::VERSION,
                  database: ActiveRecord::Base.connection.adapter_name}
  rescue => e
    render json: {status: "error", error: "#{e.class}: #{e.message}"}, status: :service_unavailable
  end

  # POST /enqueue {"kind": "plain", "count": 3, ...options} → {"kind", "jids"}
  def enqueue
    body = request.request_parameters
    kind = body["kind"] || params[:kind]
    count = (body["count"] || params[:count] || 1).to_i
    opts = body.except("kind", "count").to_h.symbolize_keys
    jids = DemoEnqueuer.enqueue(kind, count, **opts)
    render json: {kind: kind, jids: jids}, status: :created
  rescue ArgumentError => e
    render json: {error: e.message}, status: :unprocessable_entity
  end

  # GET /runs?jid=...&kind=...: the last `limit` rows. With after_id=N: the first `limit` rows
  # after id N, so a reader pages through every row (bench/load.py counts executions per jid).
  def runs
    scope = filter(JobRun)
    return render json: scope.order(:id).last(limit) unless params[:after_id]

    render json: scope.where("id > ?", params[:after_id].to_i).order(:id).limit(limit)
  end

  # GET /stats: Sidekiq's queue-wide figures, as Sidekiq::Stats reads them from Redis
  def stats
    s = Sidekiq::Stats.new
    render json: {processed: s.processed, failed: s.failed, enqueued: s.enqueued, queues: s.queues,
                  scheduled_size: s.scheduled_size, retry_size: s.retry_size, dead_size: s.dead_size}
  end

  # GET /events?jid=...&event=...
  def events
    scope = filter(JobEvent)
    scope = scope.where(event: params[:event]) if params[:event]
    render json: scope.order(:id).last(limit)
  end

  private

  def filter(scope)
    scope = scope.where(jid: params[:jid]) if params[:jid]
    scope = scope.where(kind: params[:kind]) if params[:kind] && scope.column_names.include?("kind")
    scope
  end

  def limit
    (params[:limit] || 100).to_i.clamp(1, 1000)
  end
end
