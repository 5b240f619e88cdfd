# frozen_string_literal: true

Rails.application.configure do
  config.cache_classes = false
  config.consider_all_requests_local = true
  config.active_record.migration_error = :page_load
  config.active_support.deprecation = :log
  config.log_level = :info
end
