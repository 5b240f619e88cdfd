# frozen_string_literal: true

# ActiveJob with a model argument (serialised as a GlobalID, loaded again when performed).
class WidgetJob < ApplicationJob
  queue_as :default

  def perform(widget)
    JobRun.record!(self, kind: "model", args: [widget.to_global_id.to_s], model_id: widget.id,
                         details: {"widget_name" => widget.name, "widget_class" => widget.class.name})
  end
end
