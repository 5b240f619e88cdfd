# frozen_string_literal: true

Rails.application.routes.draw do
  get "/health", to: "demo#health"
  post "/enqueue", to: "demo#enqueue"
  get "/runs", to: "demo#runs"
  get "/events", to: "demo#events"
  get "/stats", to: "demo#stats"
end
