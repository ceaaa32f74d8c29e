"""ditta_ros: DiTTA test-time adaptation of image segmenters into video segmenters, for ROS 2.

The core (everything but :mod:`ditta_ros.node`) never imports rclpy.
"""

__version__ = "0.1.0"
